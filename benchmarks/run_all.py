"""Run every benchmark once with its defaults (``make bench``), one after another in fresh
processes so that none warms another's caches; each writes its JSON to ``benchmarks/results/``
and prints its own table. Figures and the machine go into ``docs/benchmarks.md`` by hand.

    .venv/bin/python benchmarks/run_all.py                 # all
    .venv/bin/python benchmarks/run_all.py capture app     # some (names without bench_ / .py)
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem[len("bench_") :] for p in HERE.glob("bench_*.py"))
    failed = []
    for name in names:
        script = HERE / f"bench_{name}.py"
        if not script.is_file():
            print(f"no benchmark {name!r}; have: {', '.join(sorted(p.stem[6:] for p in HERE.glob('bench_*.py')))}")
            return 2
        print(f"=== {name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"=== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
