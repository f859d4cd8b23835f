"""The benchmark harness: Tidings against Nchan on the same machine, in the same run."""
