"""Use the eqpo library on one simulated RL step and one simulated evaluation.

Everything here is the library's public API: demographic groups -> reward from text answers ->
advantages from every estimator -> fairness metrics. The "policy" is simulated (a per-group answer
accuracy fixed below), so the numbers illustrate the mechanics, not any result of the paper.

    python examples/quickstart.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eqpo.core.advantages import ESTIMATORS, make_estimator
from eqpo.core.groups import age_bin, explicit_group
from eqpo.core.metrics import FairnessReport, fairness_summary
from eqpo.core.rewards import render_answer, score_response
from eqpo.core.vocabularies import PAPER_DATASETS

SEED = 0
N_PROMPTS, N_ROLLOUTS = 96, 8
DATASETS = ["CheXpert", "HAM10000", "VinDr-Mammo"]
# Simulated chance of a correct answer: the policy serves older patients worse (a stand-in for a
# pretrained model's bias); a fixed illustration, not fitted to anything.
ACCURACY_BY_AGE_BIN = {"a1": 0.75, "a2": 0.7, "a3": 0.5, "a4": 0.3}


def simulate_prompts(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for i in range(N_PROMPTS):
        name = DATASETS[i % len(DATASETS)]
        spec = PAPER_DATASETS[name]
        age = float(rng.uniform(20, 90)) if rng.random() > 0.2 else np.nan
        sex = rng.choice(["F", "M"]) if "sex" in spec.attributes else None
        k = int(rng.integers(1, 3)) if spec.multi_label else 1
        truth = list(rng.choice(spec.labels, size=k, replace=False))
        rows.append(
            {
                "sample_id": f"q{i}",
                "dataset": name,
                "age": age,
                "sex": sex,
                "labels": truth,
                "group": explicit_group(age, sex, spec.attributes),
            }
        )
    return pd.DataFrame(rows)


def answer(rng: np.random.Generator, prompt: pd.Series) -> str:
    """One simulated response: right with the prompt's age-bin accuracy, else a wrong label; 5% no box."""
    spec = PAPER_DATASETS[prompt.dataset]
    age_key = age_bin(prompt.age) or "a3"  # the bias follows the true age, recorded or not
    if rng.random() < 0.05:
        return "<think>unsure</think> I cannot tell."
    if rng.random() < ACCURACY_BY_AGE_BIN[age_key]:
        return render_answer(prompt.labels, "consistent with the findings")
    wrong = [label for label in spec.labels if label not in prompt.labels]
    return render_answer([rng.choice(wrong)], "a guess")


def main() -> None:
    rng = np.random.default_rng(SEED)
    prompts = simulate_prompts(rng)

    # One RL step: N_ROLLOUTS sampled answers per prompt, scored by the paper's reward.
    rows = []
    for prompt in prompts.itertuples():
        for _ in range(N_ROLLOUTS):
            result = score_response(answer(rng, prompt), prompt.labels, PAPER_DATASETS[prompt.dataset].labels)
            rows.append(
                {
                    "sample_id": prompt.sample_id,
                    "dataset": prompt.dataset,
                    "group": prompt.group,
                    "reward": result.score,
                }
            )
    step = pd.DataFrame(rows)
    print(
        f"One step: {len(prompts)} prompts x {N_ROLLOUTS} rollouts, mean reward {step.reward.mean():.3f}, "
        f"{prompts.group.isna().mean():.0%} of prompts without demographics\n"
    )

    # Every estimator on the same batch. Mean advantage of the rewarded (reward > 0) responses per
    # group: EQPO gives more weight to groups and datasets the policy currently serves worse.
    step["age_bin"] = step.group.str.split("|").str[-1].fillna("unlabeled")
    table = {}
    for method in ESTIMATORS:
        est = make_estimator(method)
        step[method] = est(step.reward, step.sample_id, step.dataset, step.group)
        table[method] = step[step.reward > 0].groupby("age_bin")[method].mean()
    print("Mean advantage of rewarded responses, by age bin of the prompt:")
    print(pd.DataFrame(table).round(3).to_string(), "\n")

    # An evaluation: one greedy answer per prompt -> predictions -> fairness metrics.
    preds = prompts.assign(
        prediction=[
            score_response(answer(rng, p), p.labels, PAPER_DATASETS[p.dataset].labels).prediction
            for p in prompts.itertuples()
        ]
    )
    summary = fairness_summary(preds)
    print("Table 2 metrics (raw fractions):")
    print(pd.Series(summary).round(4).to_string(), "\n")
    print("Per-group metrics (paper Tables 5-17 rows):")
    print(FairnessReport.from_predictions(preds).by_group.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
