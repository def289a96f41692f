"""The GPU memory plan of a verl run (eqpo.backends.verl.memory_plan): hand-computed terms, the smoke and paper
configurations against 80 GB GPUs, and the preflight that stops a run that does not fit."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from eqpo.backends.verl import memory_plan as mp
from eqpo.backends.verl import preflight as pf
from eqpo.runs.settings import RunSettings, load_config

REPO = Path(__file__).resolve().parents[3]
PAPER = yaml.safe_load((REPO / "config.yaml").read_text())
SMOKE = load_config([REPO / "config" / "smoke.yaml"], REPO)
GIB_80, GIB_141 = mp.GPU_SIZES_GIB["80 GB"], mp.GPU_SIZES_GIB["141 GB"]


def test_terms_by_hand():
    """2**31 parameters over 2 GPUs: 1 GiB per byte of each parameter on a GPU."""
    plan = mp.memory_plan(2**31, 2, gpu_gib=80, rollout_share=0.5, tokens_per_gpu=2**10, vocab_size=2**20)
    assert plan.update == {
        "fp32 parameters": 4,
        "fp32 gradients": 4,
        "AdamW moments": 8,
        "AdamW foreach temporary": 4,
        "logits of a micro-batch": 10,
        "CUDA context": mp.CUDA_CONTEXT_GIB,
        "vLLM asleep": mp.VLLM_ASLEEP_GIB,
    }
    # logits (10) and the foreach temporary (4) never coexist: the larger counts
    assert plan.update_gib == 4 + 4 + 8 + 10 + 1 + 2 == 29
    assert plan.rollout_gib == 40 + 4 + 8 + 1 == 53 and plan.peak_gib == 53
    # offloading frees the GPU only while vLLM generates: verl loads both back for the update
    offloaded = mp.memory_plan(
        2**31,
        2,
        gpu_gib=80,
        rollout_share=0.5,
        tokens_per_gpu=2**10,
        vocab_size=2**20,
        param_offload=True,
        optimizer_offload=True,
    )
    assert offloaded.rollout_gib == 41 and offloaded.update_gib == plan.update_gib
    # a short micro-batch: the step's foreach temporary is the larger
    short = mp.memory_plan(2**31, 2, gpu_gib=80, rollout_share=0.5, tokens_per_gpu=2**8, vocab_size=2**20)
    assert short.update_gib == 4 + 4 + 8 + 4 + 1 + 2
    # FSDP2 CPUOffloadPolicy: parameters, gradients and AdamW on the host, the step there too
    policy = mp.memory_plan(
        2**31, 2, gpu_gib=80, rollout_share=0.5, tokens_per_gpu=2**10, vocab_size=2**20, cpu_offload_policy=True
    )
    assert policy.update_gib == 10 + 3 and policy.rollout_gib == 41
    with pytest.raises(ValueError, match=">= 1 GPU"):
        mp.memory_plan(10, 0, gpu_gib=80, rollout_share=0.5, tokens_per_gpu=1, vocab_size=1)


@given(
    n=st.integers(10**8, 10**11),
    gpus=st.integers(1, 7),
    tokens=st.integers(1, 65536),
    share=st.floats(0.1, 0.9),
    offload=st.booleans(),
)
def test_more_gpus_never_need_more_memory_per_gpu(n, gpus, tokens, share, offload):
    def plan(g):
        return mp.memory_plan(
            n,
            g,
            gpu_gib=80,
            rollout_share=share,
            tokens_per_gpu=tokens,
            vocab_size=151_936,
            param_offload=offload,
            optimizer_offload=offload,
        )

    fewer, more = plan(gpus), plan(gpus + 1)
    assert more.update_gib <= fewer.update_gib and more.rollout_gib <= fewer.rollout_gib
    # the sharded state (parameters, gradients, AdamW) scales as 1/gpus exactly
    assert more.update["AdamW moments"] * (gpus + 1) == pytest.approx(fewer.update["AdamW moments"] * gpus)


def shape_of(config, model="medgemma-4b", method="grpo"):
    settings = RunSettings.from_config(config, model, method)
    entry = settings.model_config
    return mp.run_shape(entry, settings.train, int(entry["params_billion"] * 1e9), entry["model_type"])


def test_the_smoke_run_fits_an_80_gb_gpu_and_would_not_on_one():
    shape = shape_of(SMOKE)
    assert shape.gpus == 2 and shape.tokens_per_gpu == 2 * (4096 + 1024) and shape.vocab_size == 262_208
    assert shape.plan(GIB_80).fits(GIB_80)
    one = shape.plan(GIB_80, gpus=1)
    # the first optimizer step alone: fp32 parameters, gradients, both moments and the temporary
    assert 4.3e9 * 5 * 4 / 2**30 == pytest.approx(80.1, abs=0.1) and not one.fits(GIB_80)
    assert shape.plan(GIB_141, gpus=1).fits(GIB_141)
    assert mp.fix_for(mp.RunShape(**{**shape.__dict__, "gpus": 1}), GIB_80).startswith("set train.gpus: 2")


@pytest.mark.parametrize("model", ["medgemma-4b", "qwen2.5-vl-7b", "qoq-med3-vl-8b"])
def test_every_paper_run_fits_its_four_80_gb_gpus(model):
    shape = shape_of(PAPER, model)
    assert shape.gpus == 4 and not shape.param_offload and shape.plan(GIB_80).fits(GIB_80)


def test_offload_settings_and_token_budget_come_from_the_model_overrides():
    config = copy.deepcopy(PAPER)
    config["models"]["qwen2.5-vl-7b"]["overrides"] = {
        "actor_rollout_ref": {"actor": {"strategy": "fsdp2", "fsdp_config": {"offload_policy": True}}},
        "+actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 4096,
    }
    shape = shape_of(config, "qwen2.5-vl-7b")
    assert shape.cpu_offload_policy and shape.tokens_per_gpu == 4096
    assert shape.plan(GIB_80).update["fp32 parameters"] == 0


def test_the_readme_table_is_the_plan(capsys):
    table = mp.plan_table([RunSettings.from_config(PAPER, m, PAPER["methods"][0]) for m in PAPER["base_models"]])
    assert mp.main(["--root", str(REPO)]) == 0 and capsys.readouterr().out == table + "\n"  # the command line's
    assert "| medgemma-4b | 1 | 107 | 97 | no | yes |" in table
    assert "| qwen2.5-vl-7b | 4 | 57 | 72 | yes | yes |" in table
    readme = (REPO / "README.md").read_text()
    for line in table.splitlines()[2:]:
        assert line in readme, f"README's memory plan table is out of date: {line}"


# ----------------------------------------------------------------------------------------------
# Preflight
# ----------------------------------------------------------------------------------------------


def gpu_node(gib: float, count: int) -> pf.Probe:
    return pf.Probe(
        find_spec=lambda name: None,
        version={"verl": "0.9.1", "vllm": "0.24.0"}.get,
        torch_cuda=lambda: (count, "13.0", "2.11.0"),
        gpu_memory=lambda: [int(gib * 2**30)] * count,
        nvidia_smi=lambda: "Driver Version: 580.65.06   CUDA Version: 13.0",
        hub_access=lambda r: None,
        disk_free=lambda p: 10**15,
        env={},
    )


def runs(config, *methods, model="medgemma-4b"):
    return [RunSettings.from_config(config, model, method) for method in methods]


def test_preflight_stops_a_run_that_does_not_fit_with_the_fix(tmp_path):
    one_gpu = copy.deepcopy(SMOKE)
    one_gpu["train"]["gpus"] = 1
    checks = pf.run_checks(runs(one_gpu, "grpo", "eqpo"), tmp_path, tmp_path, gpu_node(79.2, 1))
    (memory,) = [c for c in checks if c.name.startswith("memory")]
    assert not memory.ok and "plan 92 of 79 GiB" in memory.detail
    assert memory.fix.startswith("set train.gpus: 2")
    fits = pf.run_checks(runs(SMOKE, "grpo", "eqpo"), tmp_path, tmp_path, gpu_node(79.2, 2))
    assert [c.ok for c in fits if c.name.startswith("memory")] == [True]
    h200 = pf.run_checks(runs(one_gpu, "grpo"), tmp_path, tmp_path, gpu_node(139.8, 1))
    assert [c.ok for c in h200 if c.name.startswith("memory")] == [True]
