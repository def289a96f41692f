"""Advantage-estimator speed at paper scale against its targets (batch scope <= 50 ms a call,
history scope <= 100 ms a call and flat over 500 steps); prints figures, not a test.

Batch: 512 prompts x 10 rollouts over the 7 paper datasets (CheXpert-dominant mix), 30% of prompts
without demographics, binary rewards drawn per prompt from a Beta(1, 1) success rate.
Targets: eqpo / eqpo_nd <= 50 ms per call in batch scope; in history scope <= 100 ms per call after
500 steps (256k accumulated prompts) and not growing with steps (the cost rises while the distinct
reward vectors fill up, at most 2**n per dataset for binary rewards, then stays flat).

    python benchmarks/bench_advantages.py [--steps 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from eqpo.core.advantages import make_estimator
from eqpo.core.groups import explicit_group
from eqpo.core.vocabularies import PAPER_DATASETS

PROMPTS, ROLLOUTS, UNLABELED = 512, 10, 0.30
MIX = {
    "CheXpert": 0.40,
    "Hemorrhage": 0.08,
    "VinDr-Mammo": 0.12,
    "ISIC-2020": 0.15,
    "HAM10000": 0.12,
    "PAD-UFES-20": 0.08,
    "COVID-BLUES": 0.05,
}


def make_batch(rng: np.random.Generator, step: int):
    names = list(MIX)
    ds = rng.choice(names, size=PROMPTS, p=list(MIX.values()))
    groups = []
    for d in ds:
        if rng.random() < UNLABELED:
            groups.append(None)
        else:
            groups.append(explicit_group(rng.uniform(18, 90), rng.choice(["F", "M"]), PAPER_DATASETS[d].attributes))
    p = rng.beta(1, 1, PROMPTS)
    rewards = (rng.random((PROMPTS, ROLLOUTS)) < p[:, None]).astype(float).ravel()
    pids = np.repeat(np.array([f"{step}-{i}" for i in range(PROMPTS)], dtype=object), ROLLOUTS)
    return (
        rewards,
        pids,
        np.repeat(np.asarray(ds, dtype=object), ROLLOUTS),
        np.repeat(np.asarray(groups, dtype=object), ROLLOUTS),
    )


def time_call(est, batch, repeats: int = 1) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        est(*batch)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    batches = [make_batch(rng, s) for s in range(20)]
    print(f"batch: {PROMPTS} prompts x {ROLLOUTS} rollouts, 7 datasets, {UNLABELED:.0%} unlabeled, binary rewards")

    grpo = make_estimator("grpo")
    grpo_ms = np.median([time_call(grpo, b, 3) for b in batches])
    print(f"grpo                      {grpo_ms:8.2f} ms/call (median of {len(batches)} batches)")
    ok = True
    for method in ("eqpo", "eqpo_nd"):
        est = make_estimator(method, scope="batch")
        ms = np.median([time_call(est, b, 3) for b in batches])
        ok &= ms <= 50
        print(f"{method:8s} batch scope      {ms:8.2f} ms/call  ratio to grpo {ms / grpo_ms:5.1f}x  target <= 50 ms")

    for method in ("eqpo", "eqpo_nd"):
        est = make_estimator(method, scope="history")
        step_rng = np.random.default_rng(args.seed + 1)
        times = [time_call(est, make_batch(step_rng, step)) for step in range(args.steps)]  # fresh batches
        times = np.asarray(times)
        early, late = np.median(times[10:60]), np.median(times[-50:])
        # Cost rises while each dataset's set of distinct reward vectors fills (at most 2**10 for
        # binary rewards), then must stay flat: compare the last fifth of the run with the middle.
        middle = np.median(times[2 * args.steps // 5 : 3 * args.steps // 5])
        prompts = est.history.domain and sum(v[0] for v in est.history.domain.values())
        distinct = sum(len(b.vectors) for b in est.history.banks.values())
        ok &= late <= 100 and late <= 1.2 * middle + 5
        print(
            f"{method:8s} history scope    steps 10-60: {early:7.2f} ms  last 50 of {args.steps}: {late:7.2f} ms"
            f"  ratio to grpo {late / grpo_ms:5.1f}x  ({int(prompts)} prompts held as {distinct} distinct vectors)"
            "  target <= 100 ms, flat"
        )
        blocks = [
            f"{b}-{min(b + 100, args.steps)}: {np.median(times[b : b + 100]):.1f}" for b in range(0, args.steps, 100)
        ]
        print(f"{'':8s} median ms per block of steps  " + "  ".join(blocks))
    print("PASS" if ok else "FAIL: a target above was missed")


if __name__ == "__main__":
    main()
