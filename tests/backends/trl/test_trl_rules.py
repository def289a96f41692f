"""The trl backend's workflow rules (eqpo.workflow.trl) without a model: what train_trl and
predict_trl hand the backend comes from their params alone (the run's settings, the `trl` block,
the data.custom entries), the run's own reward and lengths included."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from eqpo.backends.trl import trainer
from eqpo.runs.settings import ReproductionOptions, RunSettings, load_config, merge_config
from eqpo.workflow import trl as rules

REPO = Path(__file__).resolve().parents[3]

# config.yaml with a trl model whose eqpo run has its own reward and response length
OVERLAY = {
    "models": {"tiny-vl": {"backend": "trl", "path": "/models/tiny"}},
    "runs": {"tiny-vl": {"eqpo": {"reward": "f1", "max_response_length": 32, "lr": 1e-3}}},
    "evaluation": {"max_samples": 3},
}
TRL = {"threads": 1, "eval_batch_size": 6, "predict_vllm": False, "micro_batch": 5}
ENTRY = {"name": "TinyDerm", "path": "raw/tiny.csv", "labels": ["a", "b"]}


def _rule(config, **extra):
    """A stand-in for Snakemake's rule object built from ``config``, without a ``config`` attribute:
    reading snakemake.config fails."""
    return SimpleNamespace(
        params=SimpleNamespace(
            settings=RunSettings.from_config(config, "tiny-vl", "eqpo").as_dict(),
            trl=TRL,
            custom=[ENTRY],
            run_dir="results/x/tiny-vl/eqpo/seed2",
        ),
        wildcards=SimpleNamespace(model="tiny-vl", method="eqpo", seed="2"),
        threads=4,
        **extra,
    )


@pytest.fixture
def calls(monkeypatch):
    """What the rules hand run_training / run_prediction and register as custom datasets."""
    import eqpo.core.vocabularies as vocabularies

    out = {"registered": []}
    monkeypatch.setattr(trainer, "run_training", lambda *a, **k: out.setdefault("train", (a, k)))
    monkeypatch.setattr(trainer, "run_prediction", lambda *a, **k: out.setdefault("predict", (a, k)))
    monkeypatch.setattr(vocabularies, "register_dataset", lambda spec: out["registered"].append(spec.name))
    return out


def test_train_trl_hands_the_run_settings_to_the_backend(calls):
    config = merge_config(load_config([], root=REPO), OVERLAY)
    rule = _rule(config, input=SimpleNamespace(train="train.parquet", val="val.parquet"))
    rules.train_rule(rule)
    (train, val, settings, trl, seed, run_dir), kwargs = calls["train"]
    assert (train, val, seed, run_dir, kwargs) == ("train.parquet", "val.parquet", 2, rule.params.run_dir, {})
    assert isinstance(settings, RunSettings) and (settings.model, settings.method) == ("tiny-vl", "eqpo")
    assert settings.model_config["path"] == "/models/tiny"
    # the run's own reward (runs.tiny-vl.eqpo.reward), not config.yaml's reward.function
    assert config["reward"]["function"] == "authors_composite"
    assert settings.options == ReproductionOptions(reward="f1")
    assert (settings.train.max_response_length, settings.train.lr, settings.train.steps) == (32, 1e-3, 90)
    assert dict(settings.estimator) == {"scope": "history", "k_max": 3, "tau": 0.1}  # estimators.eqpo
    assert settings.max_samples == 3
    assert trl == TRL  # the whole block: trl_settings sets threads and predict_vllm aside
    assert calls["registered"] == ["TinyDerm"]


def test_predict_trl_answers_with_the_runs_length_reward_and_sample_bound(calls):
    config = merge_config(load_config([], root=REPO), OVERLAY)
    rule = _rule(config, input=SimpleNamespace(test="test.parquet", model="run/model"), output=["pred.parquet"])
    rules.predict_rule(rule)
    args, kwargs = calls["predict"]
    assert args == ("test.parquet", "run/model", "pred.parquet")
    assert kwargs == {
        "options": ReproductionOptions(reward="f1"),
        "max_new_tokens": 32,
        "max_samples": 3,
        "batch_size": 6,
        "use_vllm": False,
        "seed": 0,
    }
    assert calls["registered"] == ["TinyDerm"]
    # without a `runs` block: config.yaml's reward and length, every test prompt, the default batch
    plain = merge_config(load_config([], root=REPO), {**OVERLAY, "runs": {}, "evaluation": {"max_samples": None}})
    rule = _rule(plain, input=rule.input, output=rule.output)
    rule.params.trl = {"threads": 1}
    calls.pop("predict")
    rules.predict_rule(rule)
    _, kwargs = calls["predict"]
    assert kwargs["options"] == ReproductionOptions() and kwargs["max_new_tokens"] == 4096
    assert (kwargs["max_samples"], kwargs["batch_size"], kwargs["use_vllm"]) == (None, 8, "auto")
