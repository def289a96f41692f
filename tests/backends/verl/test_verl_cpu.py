"""The pieces of verl-on-CPU (eqpo.backends.verl.cpu, hf_rollout, hf_server, compat) one by one, fast.
verl's whole loop with them runs in tests/backends/verl/test_verl_loop.py.

Checks that need a fresh process (which platform verl picks, what its Ray actor classes captured at
import) run in a subprocess with the environment a verl process of a run gets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

from eqpo.backends.verl import compat, cpu, launch  # noqa: E402
from eqpo.runs.settings import RunSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
SRC = REPO / "src"


def _python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    full = {**os.environ, "PYTHONPATH": str(SRC), "VERL_USE_EXTERNAL_MODULES": "eqpo.backends.verl", **env}
    for key in [k for k, v in env.items() if v is None]:
        full.pop(key)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)


def _last_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------
# The platform: chosen by the config, never detected
# ----------------------------------------------------------------------------------------------


def test_verl_gets_the_cpu_platform_only_when_the_run_asks_for_it():
    code = (
        "import verl.utils.device as d, verl.utils.distributed as dist, eqpo.backends.verl.cpu as c\n"
        "from verl.workers.rollout import base, replica\n"
        "print(d.get_device_name(), d.get_nccl_backend(), dist.initialize_global_process_group_ray.__defaults__,"
        " ('hf', 'async') in base._ROLLOUT_REGISTRY, 'hf' in replica.RolloutReplicaRegistry._registry)"
    )
    assert _last_line(_python(code + "; print(d.get_device_id())", VERL_PLATFORM="cpu")) == "cpu"
    assert _python(code, VERL_PLATFORM="cpu").stdout.splitlines()[-1] == "cpu gloo (None, 'gloo') True True"
    # without VERL_PLATFORM (every GPU run) verl detects its own platform; no hf rollout, no patches
    out = _last_line(_python(code, VERL_PLATFORM=None, CUDA_VISIBLE_DEVICES=""))
    assert out.startswith("cuda nccl (None, None) False False")


def test_the_cpu_platform_never_offers_itself_to_verls_detection():
    assert not cpu.active() and cpu.register() is False  # this process is no CPU run: nothing registered
    platform = cpu._register_platform()()
    assert not platform.is_platform_available(use_smi_check=True)
    assert platform.ray_resource_name() == "GPU" and platform.communication_backend_name() == "gloo"


def test_another_verl_or_moved_registries_stop_with_a_clear_error(monkeypatch):
    import verl
    from verl.workers.rollout import replica

    cpu.check_verl()  # the installed verl 0.9.1 passes
    monkeypatch.setattr(verl, "__version__", "0.9.2")
    with pytest.raises(cpu.VerlVersionError, match=r"written for verl 0\.9\.1, found 0\.9\.2.*pip install"):
        cpu.check_verl()
    monkeypatch.setattr(verl, "__version__", "0.9.1")
    monkeypatch.delattr(replica, "RolloutReplicaRegistry")
    with pytest.raises(cpu.VerlVersionError, match="RolloutReplicaRegistry not found"):
        cpu.check_verl()


# ----------------------------------------------------------------------------------------------
# The launcher: train.device
# ----------------------------------------------------------------------------------------------


def _tiny_config(tmp_path: Path, device: str | None) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    config["models"]["tiny"] = {"backend": "verl", "path": str(model), "model_type": "qwen2_5_vl"}
    config["train"].update({"gpus": 2, "tensor_parallel": 1, **({"device": device} if device else {})})
    return config


def _command(config: dict, tmp_path: Path, num_cpus: int | None = 2):
    paths = launch.RunPaths.for_run(tmp_path / "run")
    argv, env = launch.build_command(
        RunSettings.from_config(config, "tiny", "eqpo"), 0, paths, tmp_path / "data", num_cpus=num_cpus
    )
    return dict(o.split("=", 1) for o in argv[3:]), env


def test_train_device_cpu_adds_the_cpu_settings_and_environment(tmp_path):
    overrides, env = _command(_tiny_config(tmp_path, "cpu"), tmp_path)
    for key, value in cpu.CPU_OVERRIDES.items():
        assert overrides[key] == launch.format_value(value), key
    assert overrides["+ray_kwargs.ray_init.num_gpus"] == "2"  # one logical GPU per FSDP rank (train.gpus)
    assert overrides["ray_kwargs.ray_init.num_cpus"] == str(cpu.RAY_CPUS)  # 2 job threads are too few for verl
    assert env["VERL_PLATFORM"] == "cpu" and env["VERL_ENGINE_DEVICE"] == "cuda"
    assert env["EQPO_VERL_DATA_DIR"] == str((tmp_path / "data").resolve())


def test_a_gpu_run_gets_nothing_of_the_cpu_path(tmp_path):
    for device in (None, "cuda"):
        (tmp_path / str(device)).mkdir()
        overrides, env = _command(_tiny_config(tmp_path / str(device), device), tmp_path / str(device), 32)
        assert overrides["actor_rollout_ref.rollout.name"] == "vllm"
        assert not {"trainer.device", "data.custom_cls.path", "+ray_kwargs.ray_init.num_gpus"} & set(overrides)
        assert "VERL_PLATFORM" not in env and "VERL_ENGINE_DEVICE" not in env


def test_train_device_is_validated_by_the_schema_and_the_run_settings(tmp_path):
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    device = schema["properties"]["train"]["properties"]["device"]
    assert device["enum"] == ["cuda", "cpu"] and device["default"] == "cuda"
    with pytest.raises(ValueError, match=r"train.device must be one of \['cuda', 'cpu'\], got 'tpu'"):
        _command(_tiny_config(tmp_path, "tpu"), tmp_path)


def test_the_evaluation_engine_is_chosen_by_the_config(tmp_path):
    from eqpo.backends.verl.evaluate import ENGINES, HFGenerator, VLLMGenerator, run_evaluation

    assert ENGINES == {"vllm": VLLMGenerator, "hf": HFGenerator}
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    engine = schema["properties"]["evaluation"]["properties"]["engine"]
    assert engine["enum"] == ["vllm", "hf"] and engine["default"] == "vllm"
    with pytest.raises(ValueError, match=r"evaluation.engine must be one of \['hf', 'vllm'\], got 'tgi'"):
        run_evaluation(tmp_path, tmp_path / "test.parquet", tmp_path / "out.parquet", {"backend": "verl"}, engine="tgi")


# ----------------------------------------------------------------------------------------------
# verl beside TRL 1.16
# ----------------------------------------------------------------------------------------------


def test_verl_builds_its_actor_model_beside_trl_1_16_only_with_the_compat_fix():
    pytest.importorskip("trl")
    code = (
        "import transformers, torch\n"
        "cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,"
        " num_attention_heads=2, num_key_value_heads=1)\n"
        "from verl.models.transformers.monkey_patch import apply_monkey_patch\n"
        "{fix}"
        "apply_monkey_patch(transformers.Qwen2ForCausalLM(cfg))\nprint('built')"
    )
    plain = {"VERL_USE_EXTERNAL_MODULES": None, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    broken = _python(code.format(fix=""), **plain)
    assert broken.returncode != 0 and "AutoModelForCausalLMWithValueHead" in broken.stderr
    assert (
        _last_line(_python(code.format(fix="import eqpo.backends.verl.compat as c; c.apply()\n"), **plain)) == "built"
    )


def test_the_compat_fix_asks_whether_trl_has_the_value_head_model():
    trl = pytest.importorskip("trl")
    assert compat.trl_has_value_head() is hasattr(trl, compat.VALUE_HEAD)
    compat.apply()
    from verl.models.transformers import monkey_patch

    assert monkey_patch.is_trl_available is compat.trl_has_value_head


def test_installing_eqpo_loads_the_fix_in_every_verl_process():
    import tomllib
    from importlib.metadata import EntryPoint

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    ((name, value),) = project["project"]["entry-points"]["verl.plugins"].items()
    module = EntryPoint(name, value, "verl.plugins").load()  # what verl's __init__ does for each plugin
    assert module.__name__ == "eqpo.backends.verl" and module.compat.apply is compat.apply


# ----------------------------------------------------------------------------------------------
# What every verl process of a run gets from eqpo.backends.verl
# ----------------------------------------------------------------------------------------------


def test_verls_agent_loop_actor_class_carries_the_gemma3_patch():
    """verl decorates its agent-loop worker with @ray.remote when the module is imported, and Ray
    copies the methods then: the patch must be in place before (else MedGemma's rollouts fail with
    "Prompt contained 0 image tokens")."""
    code = (
        "import verl.trainer.ppo.v1.agent_loop_tq as m\n"
        "f = m.AgentLoopWorkerTQ.__ray_metadata__.modified_class._compute_multi_modal_inputs\n"
        "chain = []\n"
        "while f is not None:\n"
        "    chain.append(f.__code__.co_filename.rsplit('/', 1)[-1]); f = getattr(f, '__wrapped__', None)\n"
        "print(chain)"
    )
    assert "gemma3.py" in _last_line(_python(code))


def test_your_own_datasets_labels_reach_the_reward_in_verls_processes(tmp_path):
    data = tmp_path / "exp" / "verl"
    data.mkdir(parents=True)
    (tmp_path / "exp" / "cohort.parquet.specs.json").write_text(
        '[{"name": "TinyDerm", "labels": ["Nevus", "Melanoma"], "multi_label": false, "attributes": ["sex"]}]'
    )
    code = (
        "from eqpo.backends.verl.reward import compute_score\n"
        "print(compute_score('TinyDerm', '\\\\boxed{Melanoma}', 'Melanoma', {'dataset': 'TinyDerm'},"
        " function='f1')['score'])"
    )
    assert _last_line(_python(code, EQPO_VERL_DATA_DIR=str(data))) == "1.0"
    assert _python(code).returncode != 0  # without it the dataset is unknown there


# ----------------------------------------------------------------------------------------------
# The hf rollout server (in process, without Ray)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from eqpo.backends.verl.hf_server import HFServer

    from tiny_vl import build_qwen_vl

    path = build_qwen_vl(tmp_path_factory.mktemp("hf_server") / "model", warm_steps=0)
    return HFServer(str(path), False, response_length=6, seed=0)


def _image():
    from PIL import Image

    return Image.new("RGB", (40, 40), (200, 30, 30))


def _prompt(server) -> list[int]:
    tokenizer = server.processor.tokenizer
    return tokenizer(
        "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>Hi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )["input_ids"]


def test_the_server_samples_from_the_image_prompt_and_reports_its_weights_step(server):
    state = {k: v.clone() for k, v in server.model.state_dict().items()}
    assert server.update_weights(state, global_steps=3)["global_steps"] == 3
    greedy = asyncio.run(
        server.generate(_prompt(server), {"temperature": 0, "max_tokens": 4}, "r1", image_data=[_image()])
    )
    assert 1 <= len(greedy.token_ids) <= 4 and greedy.extra_fields == {"global_steps": 3}
    # the log-probabilities are those of the model on prompt + response (teacher forcing)
    ids = torch.tensor([_prompt(server) + greedy.token_ids])
    vision = server._vision_inputs([_image()])
    with torch.no_grad():
        logits = server.model(input_ids=ids, **vision).logits[0, len(_prompt(server)) - 1 : -1]
    expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(greedy.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(greedy.log_probs), expected, atol=1e-4, rtol=0)
    assert (
        greedy.token_ids
        == asyncio.run(
            server.generate(_prompt(server), {"temperature": 0, "max_tokens": 4}, "r2", image_data=[_image()])
        ).token_ids
    )


def test_new_weights_change_what_the_server_generates(server):
    before = asyncio.run(server.generate(_prompt(server), {"temperature": 0}, "a", image_data=[_image()]))
    state = {k: v.clone() for k, v in server.model.state_dict().items()}
    state["lm_head.weight"] = torch.zeros_like(state["lm_head.weight"])  # all logits equal: greedy takes id 0
    original = {k: v.clone() for k, v in server.model.state_dict().items()}
    try:
        server.update_weights(state, global_steps=4)
        after = asyncio.run(server.generate(_prompt(server), {"temperature": 0}, "b", image_data=[_image()]))
        assert after.token_ids == [0] * 6 != before.token_ids and after.extra_fields["global_steps"] == 4
    finally:
        server.update_weights(original)


def test_a_partial_or_foreign_weight_update_is_refused(server):
    state = {k: v.clone() for k, v in server.model.state_dict().items()}
    with pytest.raises(KeyError, match="the rollout model does not have: \\['foo.weight'\\]"):
        server.update_weights({**state, "foo.weight": torch.zeros(1)})
    name = next(k for k in state if "layers.0" in k)
    with pytest.raises(KeyError, match="sent no weights for"):
        server.update_weights({k: v for k, v in state.items() if k != name})
