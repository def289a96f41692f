"""The trl backend on a real (tiny) vision-language model: TRL's GRPOTrainer generates from image
prompts rendered by the processor's chat template, the library's reward parses the ``\\boxed{}``
answers, our estimator replaces TRL's group normalisation, and TRL's token-level loss trains on
those advantages. Each claim is checked against an independent computation from the logged
rollouts (which only record what happened)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from eqpo.core.advantages import make_estimator

BOX = re.compile(r"\\boxed\{([^{}]*)\}")


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _steps(rollouts):
    by_step = {}
    for r in rollouts:
        by_step.setdefault(r["step"], []).append(r)
    return {s: sorted(rows, key=lambda r: r["row"]) for s, rows in sorted(by_step.items())}


def _replay(method, options, rollouts, upto=None):
    """A fresh estimator fed the logged batches in order: prompt id = (step, sample id), the
    dataset and explicit group of each row, the logged reward. Returns ({step: advantages}, estimator)."""
    est = make_estimator(method, **options)
    out = {}
    for step, rows in _steps(rollouts).items():
        if upto is not None and step > upto:
            break
        out[step] = est(
            np.array([r["reward"] for r in rows]),
            [f"{step}/{r['sample_id']}" for r in rows],
            [r["dataset"] for r in rows],
            [r["group"] for r in rows],
        )
    return out, est


def _truths(fixture_data):
    from eqpo.data.export import read_export

    rows = read_export(fixture_data["verl"] / "train.parquet")
    return {
        str(info["sample_id"]): rm["ground_truth"]
        for info, rm in zip(rows["extra_info"], rows["reward_model"], strict=False)
    }


def test_rollouts_are_real_generations_with_boxed_answers_parsed(runs, fixture_data, helpers):
    truths = _truths(fixture_data)
    for method in ("grpo", "eqpo"):
        rollouts = _jsonl(runs[method] / "rollouts.jsonl")
        assert len(rollouts) == 4 * 2 * 4  # steps x prompts x rollouts
        boxed = [r for r in rollouts if BOX.search(r["completion"])]
        assert len(boxed) >= len(rollouts) // 4, "the warm-started model should mostly answer in a box"
        for r in rollouts:
            found = BOX.findall(r["completion"])
            answer = found[-1].strip() if found else None
            assert r["prediction"] == ([answer] if answer in helpers.LABELS else [])
            # label-set F1 with strict matching on a single-label task: 1 for the right label alone
            assert r["reward"] == (1.0 if answer == truths[r["sample_id"]] else 0.0)
        assert any(r["parsed"] for r in rollouts) and not all(r["parsed"] for r in rollouts)
        rewards = np.array([r["reward"] for r in rollouts])
        assert 0 < rewards.mean() < 1  # a learning signal: some groups have mixed rewards


def test_grpo_with_trls_epsilon_gives_exactly_trls_own_advantages(runs):
    rollouts = _jsonl(runs["grpo"] / "rollouts.jsonl")
    ours = np.array([r["advantage"] for r in rollouts])
    trl = np.array([r["trl_advantage"] for r in rollouts])
    assert np.abs(ours).max() > 0.5  # not a batch of ties
    np.testing.assert_allclose(ours, trl, rtol=0, atol=2e-6)  # TRL computes in float32


@pytest.mark.parametrize("method,options", [("grpo", {"eps": 1e-4}), ("eqpo", {})])
def test_the_loss_receives_the_estimators_advantages(runs, method, options):
    rollouts = _jsonl(runs[method] / "rollouts.jsonl")
    expected, _ = _replay(method, options, rollouts)
    for step, rows in _steps(rollouts).items():
        np.testing.assert_allclose([r["advantage"] for r in rows], expected[step], rtol=0, atol=1e-12)
    received = _jsonl(runs[method] / "loss_inputs.jsonl")
    seen = {}
    for call in received:
        for row, adv in zip(call["rows"], call["advantages"], strict=False):
            assert (call["step"], row) not in seen
            seen[(call["step"], row)] = adv
    assert sorted(seen) == [(s, i) for s in range(1, 5) for i in range(8)]  # every completion, once
    for (step, row), adv in seen.items():
        assert adv == pytest.approx(expected[step][row], abs=2e-6)
    if method == "eqpo":  # the replacement is real: EQPO's scaling differs from TRL's own GRPO
        trl = np.array([r["trl_advantage"] for r in rollouts])
        ours = np.array([r["advantage"] for r in rollouts])
        assert np.abs(ours - trl).max() > 1e-3


def test_run_files_follow_the_contract(runs):
    for _method, run in runs.items():
        steps = _jsonl(run / "steps.jsonl")
        assert [s["step"] for s in steps] == [1, 2, 3, 4]
        for s in steps:
            assert {"reward_mean", "time_step_s", "time_generate_s", "time_advantage_s", "time_update_s"} <= set(s)
        rollouts = _steps(_jsonl(run / "rollouts.jsonl"))
        for s in steps:
            assert s["reward_mean"] == pytest.approx(np.mean([r["reward"] for r in rollouts[s["step"]]]))
        dynamics = _jsonl(run / "dynamics.jsonl")
        assert [d["step"] for d in dynamics] == [0, 2, 4]
        assert all("F1" in d and "unparseable" in d for d in dynamics)
        clusters = pd.read_parquet(run / "clusters.parquet")
        assert list(clusters.columns) == ["sample_id", "step", "dataset", "cluster", "k", "true_group"]
        assert (run / "model" / "model.safetensors").exists() and (run / "model" / "chat_template.jinja").exists()
        assert not (run / "ckpt").exists()
    # EQPO's implicit groups: the fixture's unlabeled prompts are clustered and logged with their step
    clusters = pd.read_parquet(runs["eqpo"] / "clusters.parquet")
    rollouts = _jsonl(runs["eqpo"] / "rollouts.jsonl")
    unlabeled = {(r["step"], r["sample_id"]) for r in rollouts if r["group"] is None}
    assert unlabeled and set(zip(clusters["step"], clusters["sample_id"], strict=False)) == unlabeled
    # ... and each step's record carries the estimator's statistics: the k of every clustered dataset
    for s in _jsonl(runs["eqpo"] / "steps.jsonl"):
        logged = clusters[clusters["step"] == s["step"]].groupby("dataset")["k"].first()
        assert {f"eqpo/k/{d}": float(k) for d, k in logged.items()} == {
            name: v for name, v in s.items() if name.startswith("eqpo/k/")
        }


def test_predictions_of_the_trained_model(runs, fixture_data, tmp_path, helpers):
    from eqpo.backends.trl.trainer import run_prediction
    from eqpo.data.export import read_export
    from eqpo.runs.settings import ReproductionOptions

    out = tmp_path / "predictions.parquet"
    table = run_prediction(
        fixture_data["verl"] / "test.parquet",
        runs["eqpo"] / "model",
        out,
        ReproductionOptions.from_config(helpers.REPRODUCTION),
        max_new_tokens=16,
        batch_size=6,
        log=lambda m: None,
    )
    test = read_export(fixture_data["verl"] / "test.parquet")
    assert table["sample_id"].tolist() == [info["sample_id"] for info in test["extra_info"]]
    assert pd.read_parquet(out).shape == table.shape
    for row in table.itertuples():
        found = BOX.findall(row.response)
        answer = found[-1].strip() if found else None
        assert list(row.prediction) == ([answer] if answer in helpers.LABELS else [])
    assert table["prediction"].map(len).sum() > 0


def test_a_killed_run_resumes_with_its_estimator_state(runs, tiny_model, fixture_data, tmp_path, helpers):
    from eqpo.backends.trl.trainer import MissingEstimatorStateError

    run = tmp_path / "eqpo"
    assert helpers.train_run(tiny_model, fixture_data, "eqpo", run, stop_after=3) == {"stopped_at": 3}
    checkpoint = run / "ckpt" / "trainer" / "checkpoint-2"
    saved = json.loads((checkpoint / "eqpo_estimator.json").read_text())
    logged = _jsonl(run / "ckpt" / "rollouts.jsonl")
    assert max(r["step"] for r in logged) == 3  # step 3 ran, then the "kill"; it is redone after the resume
    _, replayed = _replay("eqpo", {}, logged, upto=2)
    assert saved["method"] == "eqpo" and saved["estimator"] == json.loads(json.dumps(replayed.state_dict()))

    broken = tmp_path / "no_state"
    shutil.copytree(run, broken)
    (broken / "ckpt" / "trainer" / "checkpoint-2" / "eqpo_estimator.json").unlink()
    with pytest.raises(MissingEstimatorStateError, match="has no eqpo_estimator.json"):
        helpers.train_run(tiny_model, fixture_data, "eqpo", broken)

    assert helpers.train_run(tiny_model, fixture_data, "eqpo", run) == {"steps": 4}
    resumed = _jsonl(run / "rollouts.jsonl")
    uninterrupted = _jsonl(runs["eqpo"] / "rollouts.jsonl")
    # the resumed run continues the same weights, optimizer, data order and sampling: same rollouts
    assert [(r["step"], r["sample_id"], r["completion"]) for r in resumed] == [
        (r["step"], r["sample_id"], r["completion"]) for r in uninterrupted
    ]
    np.testing.assert_allclose(
        [r["advantage"] for r in resumed], [r["advantage"] for r in uninterrupted], rtol=0, atol=1e-12
    )
    # the logs hold each step once: step 3's records from before the kill were dropped on resume
    assert [r["step"] for r in _jsonl(run / "steps.jsonl")] == [1, 2, 3, 4]
    assert [r["step"] for r in _jsonl(run / "dynamics.jsonl")] == [0, 2, 4]
    assert [c["step"] for c in _jsonl(run / "loss_inputs.jsonl")] == [1, 1, 2, 2, 3, 3, 4, 4]  # 2 micro-batches
    clusters = pd.read_parquet(run / "clusters.parquet")
    pd.testing.assert_frame_equal(clusters, pd.read_parquet(runs["eqpo"] / "clusters.parquet"))
    # the final estimator state holds the history of all four steps, two of them before the kill
    _, replayed = _replay("eqpo", {}, resumed)
    final = json.loads((run / "estimator.json").read_text())
    assert final["estimator"] == json.loads(json.dumps(replayed.state_dict()))
    _, after_kill_only = _replay("eqpo", {}, [r for r in resumed if r["step"] > 2])
    assert final["estimator"] != json.loads(json.dumps(after_kill_only.state_dict()))


def test_two_processes_compute_advantages_on_the_gathered_batch(tiny_model, fixture_data, tmp_path, helpers):
    """torch.distributed.run with two CPU processes: each generates for its own prompt, the estimator
    runs on the gathered batch of both, and each process's loss gets its own slice of that result."""
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "ddp"
    args = {
        "entry": fixture_data["entry"],
        "train": str(fixture_data["verl"] / "train.parquet"),
        "val": str(fixture_data["verl"] / "val.parquet"),
        "run": str(run),
        "settings": helpers.run_settings(tiny_model, "eqpo", train={"steps": 2}).as_dict(),
        "trl": {**helpers.TRL, "micro_batch": 4},
    }
    worker = Path(__file__).with_name("ddp_worker.py")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(worker), json.dumps(args)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rollouts = _jsonl(run / "rollouts.jsonl")
    expected, _ = _replay("eqpo", {}, rollouts)
    for step, rows in _steps(rollouts).items():
        assert len(rows) == 8 and len({r["sample_id"] for r in rows}) == 2  # both processes' prompts
        np.testing.assert_allclose([r["advantage"] for r in rows], expected[step], rtol=0, atol=1e-12)
    for call in _jsonl(run / "loss_inputs.jsonl"):
        # one micro-batch per process per step: process 0 trained rows 0-3, process 1 rows 4-7
        assert sorted(call["rows"][:4]) == [0, 1, 2, 3] and sorted(call["rows"][4:]) == [4, 5, 6, 7]
        for row, adv in zip(call["rows"], call["advantages"], strict=False):
            assert adv == pytest.approx(expected[call["step"]][row], abs=2e-6)
