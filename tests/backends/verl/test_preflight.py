"""The GPU preflight and the base-model facts it rests on (weights, model type, attention, parameter
count, disk), on a faked GPU node: every probe of the machine is replaced."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from eqpo.backends.verl import preflight as pf
from eqpo.runs import base_models as bm
from eqpo.runs.settings import RunSettings

REPO = Path(__file__).resolve().parents[3]
PAPER = yaml.safe_load((REPO / "config.yaml").read_text())
SMI_580 = "| NVIDIA-SMI 580.65.06    Driver Version: 580.65.06    CUDA Version: 13.0     |"


def node(**changes) -> pf.Probe:
    """A healthy node with four 80 GB GPUs, verl 0.9.1 and vLLM, CUDA 13 driver, hub reachable, 10 TB free."""
    installed = {"verl": "0.9.1", "vllm": "0.24.0"}
    fields = dict(
        find_spec=lambda name: object() if name in ("flash_attn", "wandb") else None,
        version=installed.get,
        torch_cuda=lambda: (4, "13.0", "2.11.0+cu130"),
        nvidia_smi=lambda: SMI_580,
        gpu_memory=lambda: [int(79.2 * 2**30)] * 4,  # four 80 GB GPUs as torch reports them
        hub_access=lambda repo: None,
        disk_free=lambda path: 10 * 10**12,
        env={},
    )
    fields.update(changes)
    return pf.Probe(**fields)


def exported(tmp_path: Path, parts=("train", "val", "test", "train_rs")) -> Path:
    data = tmp_path / "verl"
    data.mkdir(parents=True, exist_ok=True)
    for part in parts:
        (data / f"{part}.parquet").write_bytes(b"")
    return data


def failed(checks) -> dict[str, str]:
    return {c.name: c.detail for c in checks if not c.ok}


# ----------------------------------------------------------------------------------------------
# Base models
# ----------------------------------------------------------------------------------------------


def write_weights(directory: Path, model_type: str, shapes: dict[str, tuple[int, ...]], files: int = 1) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": model_type}))
    names = sorted(shapes)
    for i in range(files):
        part = {n: torch.zeros(shapes[n], dtype=torch.bfloat16) for n in names[i::files]}
        save_file(part, str(directory / f"model-{i + 1:05d}-of-{files:05d}.safetensors"))
    return directory


def test_weights_are_found_locally_in_the_hf_cache_or_only_on_the_hub(tmp_path):
    local = write_weights(tmp_path / "local", "gemma3", {"w": (2, 2)})
    assert bm.resolve_weights(str(local)) == bm.Weights("local", local.resolve())
    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--google--medgemma-4b-it"
    write_weights(repo / "snapshots" / "abc123", "gemma3", {"w": (2, 2)})
    write_weights(repo / "snapshots" / "old999", "gemma3", {"w": (2, 2)})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    env = {"HF_HOME": str(tmp_path / "hf")}
    assert bm.resolve_weights("google/medgemma-4b-it", env) == bm.Weights("cache", repo / "snapshots" / "abc123")
    assert bm.resolve_weights("google/medgemma-4b-it", {"HF_HUB_CACHE": str(cache)}).where == "cache"
    assert bm.resolve_weights("google/medgemma-4b-it", {"HF_HUB_CACHE": str(tmp_path / "empty")}) == bm.Weights(
        "hub", None
    )
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        bm.resolve_weights(str(tmp_path / "bare"))
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        bm.resolve_weights("a/b/c")


def test_parameter_count_comes_from_the_safetensors_headers(tmp_path):
    shapes = {"embed": (10, 4), "proj": (4, 4), "bias": (4,), "scalar": ()}  # 40 + 16 + 4 + 1 = 61
    weights = write_weights(tmp_path / "m", "qwen2_5_vl", shapes, files=2)
    assert bm.parameter_count(weights) == 61
    assert bm.parameters_of({"params_billion": 4.3}, bm.Weights("local", weights)) == 61  # the weights win
    assert bm.parameters_of({"params_billion": 4.3}, bm.Weights("hub", None)) == 4_300_000_000
    assert bm.parameters_of({}, bm.Weights("hub", None)) is None


def test_disk_of_a_run_by_hand():
    n = 10**9
    assert bm.checkpoint_bytes(n) == 12 * 10**9 and bm.checkpoint_bytes(n, save_hf_model=True) == 14 * 10**9
    # keep 1: the new checkpoint is written before the old one goes (2 at once), + the bf16 merge
    assert bm.run_disk_bytes(n) == 2 * 12 * 10**9 + 2 * 10**9
    assert bm.run_disk_bytes(n, keep=3, save_hf_model=True) == 4 * 14 * 10**9 + 2 * 10**9
    assert bm.run_disk_bytes(n, keep=None, saves=5) == 5 * 12 * 10**9 + 2 * 10**9
    with pytest.raises(ValueError, match="needs the number of saves"):
        bm.run_disk_bytes(n, keep=None)


def test_attention_choices():
    assert bm.attention({}, "m", "qwen2_5_vl") == "sdpa"
    assert bm.attention_overrides("sdpa", "qwen2_5_vl") == {bm.ATTN_KEY: "sdpa", bm.REMOVE_PADDING_KEY: False}
    assert bm.attention_overrides("flash_attention_2", "qwen3_vl") == {
        bm.ATTN_KEY: "flash_attention_2",
        bm.REMOVE_PADDING_KEY: True,
    }
    assert bm.attention_overrides("sdpa", "gemma3")[bm.FUSED_KERNELS_KEY] is False
    with pytest.raises(ValueError, match="sdpa only"):
        bm.attention({"attention": "eager"}, "m", "gemma3")
    with pytest.raises(ValueError, match=r"models\.m\.attention = 'flash'"):
        bm.attention({"attention": "flash"}, "m", None)


# ----------------------------------------------------------------------------------------------
# Preflight checks
# ----------------------------------------------------------------------------------------------


def settings(config, models, methods):
    return [RunSettings.from_config(config, model, method) for model in models for method in methods]


def run(tmp_path, probe, config=PAPER, models=("medgemma-4b",), methods=("grpo", "eqpo"), **kwargs):
    runs = settings(config, models, methods)
    return pf.run_checks(runs, exported(tmp_path), tmp_path / "results", probe, **kwargs)


def test_a_healthy_node_passes_and_prints_one_table(tmp_path):
    checks = run(tmp_path, node())
    assert pf.problems(checks) == []
    names = [c.name for c in checks]
    assert names == [
        "torch",
        "GPUs",
        "driver",
        "verl",
        "vLLM",
        "weights medgemma-4b",
        "attention medgemma-4b",
        "memory medgemma-4b",
        "data",
        "disk",
    ]
    text = pf.report(checks)
    assert text.splitlines()[0].split() == ["check", "status", "detail"]
    assert len(text.splitlines()) == 2 + len(checks) + 2 and text.endswith("preflight: no problems")
    detail = {c.name: c.detail for c in checks}
    assert detail["attention medgemma-4b"] == "sdpa (gemma3)"
    # 4.3e9 parameters: (1 + 1) x 12 bytes + 2 bytes merged = 26 bytes/param = 111.8 GB per run
    assert "one run needs up to 112 GB, all 2 runs 224 GB" in detail["disk"]
    # three seeds of each: 6 runs of 111.8 GB
    three = {c.name: c.detail for c in run(tmp_path, node(), seeds=3)}
    assert "one run needs up to 112 GB, all 6 runs 671 GB" in three["disk"]


def test_gpus_driver_and_torch_build(tmp_path):
    assert failed(run(tmp_path, node(torch_cuda=lambda: (2, "13.0", "2.11.0"))))["GPUs"] == "2 visible, 4 needed"
    old = SMI_580.replace("580.65.06", "550.54.15").replace("13.0", "12.4")
    detail = failed(run(tmp_path, node(nvidia_smi=lambda: old)))["driver"]
    assert "torch's CUDA 13.0 needs driver R580 or newer" in detail
    assert "the driver supports CUDA 12.4 but torch is built for CUDA 13.0" in detail
    assert "no driver version" in failed(run(tmp_path, node(nvidia_smi=lambda: None)))["driver"]
    cpu = failed(run(tmp_path, node(torch_cuda=lambda: (0, None, "2.13.0+cpu"))))
    assert cpu["torch"] == "2.13.0+cpu is a CPU build (no CUDA)" and cpu["GPUs"] == "0 visible, 4 needed"
    assert failed(run(tmp_path, node(), gpus=1)) == {}


def test_packages(tmp_path):
    assert failed(run(tmp_path, node(version={"verl": "0.8.0"}.get))) == {
        "verl": "0.8.0 installed, 0.9.1 needed",
        "vLLM": "not installed",
    }


def test_weights_gated_offline_and_cached(tmp_path):
    gated = node(hub_access=lambda repo: "GatedRepoError: Access to model google/medgemma-4b-it is restricted")
    checks = run(tmp_path, gated)
    assert "GatedRepoError" in failed(checks)["weights medgemma-4b"]
    assert "huggingface-cli login" in pf.problems(checks)[0]
    offline = failed(run(tmp_path, node(env={"HF_HUB_OFFLINE": "1"})))
    assert "HF_HUB_OFFLINE is set" in offline["weights medgemma-4b"]
    cache = tmp_path / "cache"
    write_weights(cache / "models--google--medgemma-4b-it" / "snapshots" / "s1", "gemma3", {"w": (3, 3)})
    checks = run(tmp_path, node(env={"HF_HUB_CACHE": str(cache)}, hub_access=lambda repo: "unreachable"))
    assert failed(checks) == {}
    assert "one run needs up to 0 GB" in {c.name: c.detail for c in checks}["disk"]  # 9 parameters, counted


def test_attention_package_and_trackers(tmp_path):
    config = copy.deepcopy(PAPER)
    config["models"]["qwen2.5-vl-7b"]["attention"] = "flash_attention_2"
    config["train"]["loggers"] = ["wandb", "mlflow"]
    nothing = node(find_spec=lambda name: None)
    found = failed(run(tmp_path, nothing, config, models=["qwen2.5-vl-7b"]))
    assert found["attention qwen2.5-vl-7b"] == "flash_attention_2 needs the flash_attn package, which is not installed"
    assert set(found) == {"attention qwen2.5-vl-7b", "logger wandb", "logger mlflow"}
    assert set(failed(run(tmp_path, node(), config, models=["qwen2.5-vl-7b"]))) == {"logger mlflow"}
    config["models"]["medgemma-4b"]["attention"] = "flash_attention_2"
    assert "sdpa only" in failed(run(tmp_path, node(), config))["attention medgemma-4b"]
    # each run's own settings are checked: a tracker only the second run asks for
    grpo, eqpo = settings(PAPER, ["medgemma-4b"], ["grpo", "eqpo"])
    eqpo = dataclasses.replace(eqpo, train=dataclasses.replace(eqpo.train, loggers=("mlflow",)))
    checks = pf.run_checks([grpo, eqpo], exported(tmp_path), tmp_path, node())
    assert set(failed(checks)) == {"logger mlflow"}


def test_data_files_per_method(tmp_path):
    data = exported(tmp_path, parts=("train", "val"))
    checks = pf.run_checks(settings(PAPER, ["medgemma-4b"], ["grpo", "grpo_rs"]), data, tmp_path, node())
    assert failed(checks)["data"] == f"{data}: missing test.parquet, train_rs.parquet"
    checks = pf.run_checks(settings(PAPER, ["medgemma-4b"], ["grpo"]), data, tmp_path, node(), evaluation=False)
    assert failed(checks) == {}


def test_disk_short(tmp_path):
    detail = failed(run(tmp_path, node(disk_free=lambda path: 50 * 10**9)))["disk"]
    assert detail.startswith("50 GB free under") and "one run needs up to 112 GB" in detail
    config = copy.deepcopy(PAPER)
    config["train"]["max_ckpt_to_keep"] = None
    disk = {c.name: c for c in run(tmp_path, node(disk_free=lambda path: 0), config)}["disk"]
    assert disk.ok and "not bounded" in disk.detail


def test_command_line(tmp_path, capsys):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "config.yaml").write_text((REPO / "config.yaml").read_text())
    schema = root / "workflow" / "schemas" / "config.schema.yaml"
    schema.parent.mkdir(parents=True)
    schema.write_text((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    overlay = tmp_path / "smoke.yaml"
    overlay.write_text((REPO / "config" / "smoke.yaml").read_text())
    exported(root / "data" / "smoke")
    assert pf.main(["--root", str(root), "--configfile", str(overlay)], probe=node()) == 0
    out = capsys.readouterr().out
    assert "weights medgemma-4b" in out and "qwen" not in out and out.rstrip().endswith("preflight: no problems")
    assert pf.main(["--root", str(root), "--configfile", str(overlay)], probe=node(version={}.get)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == [
        "2 problem(s):",
        "verl: not installed -> install verl[vllm]==0.9.1 (envs/gpu.yaml)",
        "vLLM: not installed -> install verl[vllm]==0.9.1; rollouts and evaluation need it",
    ]
