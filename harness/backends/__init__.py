"""Fleet backends: one `open_fleet(shape, workdir, mutant)` each (see harness/runner.py)."""
