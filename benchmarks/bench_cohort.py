"""Benchmark of the demo cohort generator (eqpo.data.demo.cohort.make_cohort), not a timed test.

Times the default cohort (CohortConfig(): the demo's size) and the tiny test cohort, best of
``--repeat`` runs, against a 1 s target for the default one (the DAG's first job waits for it).

Run: python benchmarks/bench_cohort.py [--repeat R]
"""

from __future__ import annotations

import argparse
import sys
import time

from eqpo.data.demo.cohort import CohortConfig, make_cohort

TARGET_S = 1.0


def best_of(config: CohortConfig, repeat: int) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        rows = len(make_cohort(config))
        times.append(time.perf_counter() - start)
    return min(times), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    default, rows = best_of(CohortConfig(), args.repeat)
    tiny, tiny_rows = best_of(CohortConfig(n_samples=1200), args.repeat)
    print(f"make_cohort default ({rows:,} samples): best of {args.repeat} {default:.3f} s (target {TARGET_S:g} s)")
    print(f"make_cohort tiny ({tiny_rows:,} samples): best of {args.repeat} {tiny:.3f} s")
    ok = default <= TARGET_S
    print(("PASS" if ok else "FAIL") + f": {default:.3f} s {'<=' if ok else '>'} {TARGET_S:g} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
