"""Benchmark of eqpo.core.metrics.fairness_summary on a paper-sized evaluation (not a timed test).

Builds a seeded synthetic predictions frame of 280,000 rows over the seven paper datasets
(CheXpert, 14-class multi-label, holds ~40% of the rows), with random ages and sexes including
missing values (VinDr-Mammo and COVID-BLUES have no sex), ~5% empty predictions and some labels
outside the vocabulary, then times fairness_summary (best of 3) against a 5 s target.

Run: python benchmarks/bench_metrics.py [--rows N] [--repeat R] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from eqpo.core.metrics import FairnessReport, fairness_summary
from eqpo.core.vocabularies import PAPER_DATASETS

TARGET_S = 5.0
BOOTSTRAP_TARGET_S = 20.0  # 1000 stratified replicates of a ~1,000-sample test set
BOOTSTRAP_ROWS = 1_000
CHEXPERT_SHARE = 0.40


def _row_counts(n_rows: int) -> dict[str, int]:
    """CheXpert gets ~40% of the rows, the six other datasets split the rest evenly."""
    names = list(PAPER_DATASETS)
    counts = {"CheXpert": int(round(n_rows * CHEXPERT_SHARE))}
    others = [name for name in names if name != "CheXpert"]
    rest = n_rows - counts["CheXpert"]
    for i, name in enumerate(others):
        counts[name] = rest // len(others) + (1 if i < rest % len(others) else 0)
    return counts


def _label_sets(rng: np.random.Generator, vocab: tuple[str, ...], multi_label: bool, n: int) -> list[list[str]]:
    """True label sets: multi-label rows hold each class w.p. 0.15 (never empty), else one class."""
    vocab_arr = np.array(vocab, dtype=object)
    if not multi_label:
        return [[label] for label in rng.choice(vocab_arr, size=n)]
    hits = rng.random((n, len(vocab))) < 0.15
    hits[~hits.any(axis=1), 0] = True  # "No Finding" when nothing else
    return [list(vocab_arr[row]) for row in hits]


def _noisy(rng: np.random.Generator, truth: list[list[str]], vocab: tuple[str, ...]) -> list[list[str]]:
    """Predictions: 5% empty, 20% one random vocabulary label (2% of rows with an extra
    out-of-vocabulary label), else the truth."""
    u = rng.random(len(truth))
    swap = rng.choice(np.array(vocab, dtype=object), size=len(truth))
    out = []
    for i, labels in enumerate(truth):
        if u[i] < 0.05:
            out.append([])
        elif u[i] < 0.25:
            out.append([swap[i], "Not A Label"] if u[i] < 0.07 else [swap[i]])
        else:
            out.append(list(labels))
    return out


def build_frame(n_rows: int = 280_000, seed: int = 0) -> pd.DataFrame:
    """Seeded synthetic predictions frame with the columns eqpo.core.metrics expects."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, n in _row_counts(n_rows).items():
        spec = PAPER_DATASETS[name]
        truth = _label_sets(rng, spec.labels, spec.multi_label, n)
        age = rng.uniform(0.0, 100.0, size=n)
        age[rng.random(n) < 0.05] = np.nan
        if "sex" in spec.attributes:
            sex = rng.choice(
                np.array(["F", "M", "female", "male", None, "O"], dtype=object),
                size=n,
                p=[0.45, 0.40, 0.04, 0.04, 0.05, 0.02],
            )
        else:
            sex = np.full(n, None, dtype=object)
        parts.append(
            pd.DataFrame(
                {
                    "dataset": name,
                    "labels": truth,
                    "prediction": _noisy(rng, truth, spec.labels),
                    "age": age,
                    "sex": sex,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def best_time(predictions: pd.DataFrame, repeat: int) -> float:
    """Best wall time (s) of ``repeat`` calls of fairness_summary."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fairness_summary(predictions)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=280_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    frame = build_frame(args.rows, args.seed)
    seconds = best_time(frame, args.repeat)
    report = FairnessReport.from_predictions(frame)
    print(
        f"rows: {len(frame):,} ({frame['dataset'].nunique()} datasets, "
        f"CheXpert {int((frame['dataset'] == 'CheXpert').sum()):,} rows x "
        f"{len(report.classes['CheXpert'])} classes)"
    )
    print(f"fairness_summary best of {args.repeat}: {seconds:.3f} s (target {TARGET_S:.0f} s)")
    print("overall:", {k: round(v, 4) for k, v in report.overall.items()})
    columns = ["dataset", "n", "attributes", "unparseable_share", "Acc", "F1", "delta_F1"]
    print(report.by_dataset[columns].to_string(index=False))
    ok = seconds <= TARGET_S
    print(f"{'PASS' if ok else 'FAIL'}: {seconds:.3f} s {'<=' if ok else '>'} {TARGET_S:.0f} s")

    from eqpo.analysis.uncertainty import bootstrap_summary

    small = build_frame(BOOTSTRAP_ROWS, args.seed)
    start = time.perf_counter()
    bootstrap_summary(small, n_boot=1000, seed=0)
    boot_s = time.perf_counter() - start
    boot_ok = boot_s <= BOOTSTRAP_TARGET_S
    print(
        f"bootstrap_summary, {len(small):,} predictions x 1000 replicates: {boot_s:.2f} s "
        f"({'PASS' if boot_ok else 'FAIL'}, target {BOOTSTRAP_TARGET_S:.0f} s)"
    )
    return 0 if ok and boot_ok else 1


if __name__ == "__main__":
    sys.exit(main())
