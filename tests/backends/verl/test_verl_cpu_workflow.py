"""config/verl_cpu.yaml, the verl path on a machine without GPU, through the whole DAG as a user runs it
(``snakemake --cores 2 --configfile config/verl_cpu.yaml``): the tiny image dataset and model built
by rule tiny_vl_fixture, export_verl, train_verl on the CPU (verl's own loop), predict_vllm with the
``hf`` engine after verl's model merger on the real checkpoint, score, Table 2 and the figures.

About 6 minutes on 2 shared cores (two verl trainings)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from snakemake_run import run_snakemake

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")
pytest.importorskip("trl")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "config" / "verl_cpu.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("verl_cpu_dag")
    run_snakemake(workdir, "--cores", "2", configs=[CONFIG], timeout=3600)
    return workdir


def test_the_overlay_ends_with_table2_and_the_figures(workdir):
    config = yaml.safe_load(CONFIG.read_text())
    results = workdir / "results" / "verl_cpu"
    table = pd.read_csv(results / "tables" / "table2.csv")
    test_table = pd.read_csv(results / "tables" / "table2_test.csv")
    for frame in (table, test_table):
        assert sorted(frame["method"]) == sorted(config["methods"]) and set(frame["model"]) == {"tiny-qwen2.5-vl"}
    for row, test_row in zip(table.itertuples(), test_table.itertuples(), strict=True):
        run = results / row.model / row.method / "seed0"
        metrics = json.loads((run / "metrics.json").read_text())
        last_validation = json.loads((run / "dynamics.jsonl").read_text().splitlines()[-1])
        assert last_validation["step"] == 2
        for key, value in metrics["summary"].items():
            # Table 2 holds each run's last validation (report.point's default), table2_test its
            # final checkpoint scored on the test split, exactly
            assert getattr(row, key) == pytest.approx(last_validation[key], rel=1e-12, abs=1e-15, nan_ok=True), key
            assert getattr(test_row, key) == pytest.approx(value, rel=1e-12, abs=1e-15, nan_ok=True), key
    for figure in ("training_dynamics", "group_f1", "cluster_stability"):
        assert (workdir / "figures" / "verl_cpu" / f"{figure}.png").stat().st_size > 0


def test_each_run_trained_with_verl_on_the_cpu_and_kept_its_checkpoint(workdir):
    for method in ("grpo", "eqpo"):
        run = workdir / "results" / "verl_cpu" / "tiny-qwen2.5-vl" / method / "seed0"
        assert [json.loads(line)["step"] for line in (run / "steps.jsonl").read_text().splitlines()] == [1, 2]
        assert [json.loads(line)["step"] for line in (run / "dynamics.jsonl").read_text().splitlines()] == [0, 2]
        assert (run / "checkpoint" / "global_step_2" / "actor" / "model_world_size_1_rank_0.pt").exists()
        log = (workdir / "logs" / "verl_cpu" / "train" / "tiny-qwen2.5-vl" / method / "seed0.log").read_text()
        assert "verl.trainer.main_ppo" in log and "trainer.device=cpu" in log and "rollout.name=hf" in log


def _checkpoint_weights(run: Path) -> dict:
    """The step-2 actor weights of the run's FSDP checkpoint (one rank), as plain tensors."""
    import torch

    shard = torch.load(
        run / "checkpoint" / "global_step_2" / "actor" / "model_world_size_1_rank_0.pt",
        map_location="cpu",
        weights_only=False,
    )
    return {name: getattr(tensor, "_local_tensor", tensor) for name, tensor in shard.items()}


def test_the_merged_checkpoint_answers_as_the_trained_policy_did_in_verls_last_validation(workdir, tmp_path):
    """verl's model merger ran on the real FSDP checkpoint: every merged tensor is the step-2 weight
    rounded to bf16 (verl 0.9.1's merger always writes bf16). The hf engine, given the checkpoint's
    own fp32 weights, answers the validation prompts greedily exactly as verl's hf rollout did with
    the step-2 weights. (The bf16 rounding alone can flip a near-tied greedy token of a tiny model,
    so the merged file itself is compared tensor by tensor, not by its answers.)"""
    import shutil

    import torch

    from eqpo.backends.verl.evaluate import HFGenerator, build_requests
    from eqpo.runs.hf_models import load_model

    val = pd.read_parquet(workdir / "data" / "verl_cpu" / "verl" / "val.parquet")
    requests = build_requests(val)
    sample_ids = [str(info["sample_id"]) for info in val["extra_info"]]
    base = workdir / "data" / "verl_cpu" / "tiny_vl" / "model"
    for method in ("grpo", "eqpo"):
        run = workdir / "results" / "verl_cpu" / "tiny-qwen2.5-vl" / method / "seed0"
        assert (run / "hf_model" / ".eqpo_merged_from").read_text().endswith("global_step_2/actor")
        trained = _checkpoint_weights(run)
        merged = load_model(run / "hf_model").state_dict()
        assert sorted(merged) == sorted(trained)
        assert all(merged[name].dtype == torch.bfloat16 for name in merged)
        assert all(torch.equal(merged[name], trained[name].to(torch.bfloat16)) for name in merged)
        assert not all(torch.equal(trained[name], value) for name, value in load_model(base).state_dict().items())

        model = load_model(base, dtype="float32")
        model.load_state_dict(trained, strict=True)
        fp32 = tmp_path / method
        model.save_pretrained(fp32)
        for file in (run / "hf_model").iterdir():  # the merged directory's processor and chat template
            if file.is_file() and not file.name.startswith(".") and not (fp32 / file.name).exists():
                shutil.copy(file, fp32 / file.name)
        dump = {
            r["sample_id"]: r["output"]
            for r in map(json.loads, (run / "verl" / "validation" / "2.jsonl").read_text().splitlines())
        }
        answers = HFGenerator(fp32, max_tokens=16, threads=1).generate(requests)
        assert answers == [dump[sid] for sid in sample_ids]
        predict_log = (workdir / "logs" / "verl_cpu" / "predict" / "tiny-qwen2.5-vl" / method / "seed0.log").read_text()
        # the export's test split: records with demographics only (data.records' default)
        n_test = len(pd.read_parquet(workdir / "data" / "verl_cpu" / "verl" / "test.parquet"))
        assert n_test > 0 and f"on {n_test} test prompts with hf" in predict_log
        predictions = pd.read_parquet(run / "predictions.parquet")
        assert len(predictions) == n_test and predictions["response"].str.contains(r"\\boxed\{", regex=True).any()
