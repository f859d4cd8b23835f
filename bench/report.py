"""Markdown tables with Tidings/Nchan ratios, the results file and the plot."""

from __future__ import annotations

import platform
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench.harness import Row

REFERENCE = "nchan"

# Per scenario: the columns shown (metric, heading, format) and the metric the ratio compares.
_DELIVERY = [
    ("delivered_per_s", "deliv/s", "{:.0f}"),
    ("lost", "lost", "{:.0f}"),
    ("duplicates", "dups", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("cpu_ms_per_1k", "CPU-ms/1k deliv", "{:.1f}"),
]
COLUMNS: dict[str, tuple[list[tuple[str, str, str]], str]] = {
    "A": (
        [("held", "held", "{:.0f}"), ("rss_mib", "RSS MiB", "{:.1f}"), ("kib_per_conn", "KiB/conn", "{:.2f}")],
        "kib_per_conn",
    ),
    "B": (
        [
            *_DELIVERY,
            ("cpu_ms_per_1k_responses", "CPU-ms/1k resp", "{:.1f}"),
            ("loadgen_cpu_pct", "loadgen CPU %", "{:.0f}"),
        ],
        "cpu_ms_per_1k",
    ),
    "C": ([*_DELIVERY, ("rss_mib", "RSS MiB", "{:.1f}")], "cpu_ms_per_1k"),
    "D": (
        [
            ("publishes_per_s", "pub/s", "{:.0f}"),
            ("publish_errors", "errors", "{:.0f}"),
            ("cpu_ms_per_1k_publishes", "CPU-ms/1k pub", "{:.1f}"),
            ("p50_ms", "deliv p50 ms", "{:.1f}"),
        ],
        "cpu_ms_per_1k_publishes",
    ),
}
TITLES = {
    "A": "A. Idle capacity: server RSS with N held subscribers",
    "B": "B. Fan-out: S subscribers on one channel, M messages at a fixed rate",
    "C": "C. Many channels: one subscriber each, publishes spread over them",
    "D": "D. Publish throughput (32 keep-alive connections, flat out)",
}


def tables(rows: list[Row]) -> str:
    out = []
    for scenario, (columns, ratio_key) in COLUMNS.items():
        mine = [r for r in rows if r.scenario == scenario]
        if not mine:
            continue
        heading = " | ".join(h for _, h, _ in columns)
        out += [f"### {TITLES[scenario]}", "", f"| case | server | {heading} | {ratio_key} vs {REFERENCE} |",
                "|" + "---|" * (len(columns) + 3)]  # fmt: skip
        reference = {r.case: r.metrics.get(ratio_key) for r in mine if r.server == REFERENCE}
        for row in mine:
            cells = [fmt.format(row.metrics[key]) if key in row.metrics else "" for key, _, fmt in columns]
            base = reference.get(row.case)
            ratio = "" if row.server == REFERENCE or not base else f"{row.metrics[ratio_key] / base:.2f}x"
            out.append(f"| {row.case} | {row.server} | {' | '.join(cells)} | {ratio} |")
        out.append("")
    return "\n".join(out)


def _command_output(*command: str) -> str:
    if shutil.which(command[0]) is None:
        return "not installed"
    done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "?"


def _distribution(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    from tidings import __version__

    nchan = _command_output("dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan")
    pushpin, condure, zurl = (_command_output("dpkg-query", "-W", "-f=${Version}", name)
                              for name in ("pushpin", "condure", "zurl"))  # fmt: skip
    sio, eio, uvicorn, ws = (
        _distribution(name) for name in ("python-socketio", "python-engineio", "uvicorn", "websockets")
    )
    return "\n".join([
        f"- machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, Tidings {__version__} (uvloop, httptools)",
        f"- {_command_output('nginx', '-v')}; Nchan {nchan}",
        f"- python-socketio {sio} (python-engineio {eio}) on uvicorn {uvicorn} (websockets {ws})",
        f"- Pushpin {pushpin}, condure {condure}, zurl {zurl}; its GRIP backend counted as the server's",
        "- server pinned to CPU 0, load generator to CPU 1; CPU and RSS summed over the server's process tree",
    ])  # fmt: skip


def plot(rows: list[Row], path: Path, log: Callable[[str], None]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return False
    idle = [r for r in rows if r.scenario == "A"]
    fanout = [r for r in rows if r.scenario == "B" and "cdf_ms" in r.extra]
    panels = int(bool(idle)) + int(bool(fanout))
    if not panels:
        return False
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5.5), squeeze=False)
    next_ax = iter(axes[0])
    if idle:
        rss_ax = next(next_ax)
        for server in sorted({r.server for r in idle}):
            for transport in ("longpoll", "sse", "ws"):
                points = [r for r in idle if r.server == server and r.case.startswith(transport + " ")]
                if points:
                    rss_ax.plot([r.metrics["held"] for r in points], [r.metrics["rss_mib"] for r in points],
                                marker="o", label=f"{server} {transport}")  # fmt: skip
        rss_ax.set(xlabel="held subscribers", ylabel="server RSS (MiB)", title="A. Idle capacity")
        rss_ax.legend(fontsize=8)
    if fanout:
        cdf_ax = next(next_ax)
        cases = list(dict.fromkeys(r.case for r in fanout))
        servers = list(dict.fromkeys(r.server for r in fanout))
        styles = ["-", ":", "-."]  # per Tidings server; dashed: the reference server
        colours = plt.get_cmap("tab10")
        for row in fanout:
            cdf = row.extra["cdf_ms"]
            style = "--" if row.server == REFERENCE else styles[servers.index(row.server) % len(styles)]
            colour = colours(cases.index(row.case) % 10)
            cdf_ax.plot(cdf, [p / 100 for p in range(len(cdf))], style, color=colour, label=f"{row.server} {row.case}")
        cdf_ax.set(
            xlabel="publish → receive latency (ms)", ylabel="fraction of deliveries", title="B. Fan-out latency CDF"
        )
        cdf_ax.set_xscale("log")
        # The legend goes below the axes: with a dozen cases it would hide the curves.
        cdf_ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
