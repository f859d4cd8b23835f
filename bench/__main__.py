"""python -m bench [--quick] [--smoke] [--servers tidings,nchan] [--scenarios ABCD] [--transports ...] [--repeat N]
    [--fanout 1000] [--label NAME]

python -m bench soak [--minutes M] [--subscribers N] ...: the long run with churn (bench/soak.py).

python -m bench capacity [--subscribers 60000] [--processes 4] ...: more idle subscribers than one
process may hold, and one publish reaching them all (bench/capacity.py)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import resource
import sys
import tempfile
from pathlib import Path

from bench import harness, report
from bench.servers import ON_REQUEST_SERVERS, SERVERS


def main() -> int:
    if sys.argv[1:2] == ["soak"]:
        from bench import soak

        return soak.main(sys.argv[2:])
    if sys.argv[1:2] == ["capacity"]:
        from bench import capacity

        return capacity.main(sys.argv[2:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (under 2 minutes)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="prove the harness works (CI): results go to a temp folder, not bench/results",
    )
    known = {**SERVERS, **ON_REQUEST_SERVERS}
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {', '.join(known)}")
    parser.add_argument("--scenarios", default="ABCD", help="letters of the scenarios to run")
    parser.add_argument(
        "--transports", default=",".join(harness.TRANSPORTS), help="comma-separated, of longpoll, sse, ws"
    )
    parser.add_argument("--repeat", type=int, help="repetitions per case (medians are reported)")
    parser.add_argument("--fanout", help="only these fan-out sizes S (comma-separated, e.g. 1000)")
    parser.add_argument("--out", type=Path, help="folder for <date>.md and the plot (default bench/results)")
    parser.add_argument("--label", help="results go to <date>-<label>.md (a partial run beside a full one)")
    args = parser.parse_args()

    plan = harness.QUICK if args.quick else harness.FULL
    if args.repeat:
        plan = dataclasses.replace(plan, repeat=args.repeat)
    if args.fanout:
        sizes = {int(size) for size in args.fanout.split(",")}
        plan = dataclasses.replace(plan, fanout=[case for case in plan.fanout if case[0] in sizes])
    out = args.out or (Path(tempfile.mkdtemp()) if args.smoke else Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def log(line: str) -> None:
        print(f"[bench] {line}", file=sys.stderr, flush=True)

    # Server and generator each hold one descriptor per connection, and neither can go past
    # the hard limit (raising it needs CAP_SYS_RESOURCE): the largest level is capped there.
    most = hard - 1000
    skipped = [n for n in plan.idle_levels if n > most]
    if skipped:
        log(f"idle levels {skipped} skipped: the hard file-descriptor limit here is {hard}")
        levels = [*(n for n in plan.idle_levels if n <= most), most]
        plan = dataclasses.replace(plan, idle_levels=levels)
    factories = {}
    for name in args.servers.split(","):
        if name not in known:
            parser.error(f"unknown server {name!r}")
        why = known[name]().unavailable()
        if why:
            log(f"skipping {name}: {why}")
        else:
            factories[name] = known[name]
    if not factories:
        log("no server to measure")
        return 1

    transports = tuple(name for name in args.transports.split(",") if name in harness.TRANSPORTS)
    rows = harness.run(plan, factories, set(args.scenarios.upper()), log, transports)
    mode = "quick" if args.quick else "full"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    text = "\n".join([f"## Results {stamp} ({mode}, {plan.repeat} repetition(s), medians)", "",
                      report.environment(), "", report.tables(rows)])  # fmt: skip
    print(text)
    name = "-".join([stamp, *([mode] if mode != "full" else []), *([args.label] if args.label else [])])
    (out / f"{name}.md").write_text(text + "\n")
    raw = [dataclasses.asdict(r) for r in rows]  # every repetition, for re-plotting
    (out / f"{name}.json").write_text(json.dumps(raw, indent=1) + "\n")
    if report.plot(rows, out / f"{name}.png", log):
        log(f"wrote {out / (name + '.md')} and {out / (name + '.png')}")
    # Correctness is asserted even here (timings never are): every message to every subscriber, once.
    broken = [r for r in rows if r.metrics.get("lost", 0) or r.metrics.get("duplicates", 0)
              or r.metrics.get("publish_errors", 0)]  # fmt: skip
    for row in broken:
        log(f"LOSS/ERRORS: {row.scenario} {row.case} {row.server}: {row.metrics}")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
