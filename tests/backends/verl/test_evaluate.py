"""Evaluation of a verl-trained model (eqpo.backends.verl.evaluate) on CPU: a fake generator stands in
for vLLM; the checkpoint merger is checked through its command line and verl's own CLI parser."""

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eqpo.backends.verl import evaluate as ev
from eqpo.data.export import to_verl
from eqpo.workflow.pipeline import score_predictions

# sample_id -> (dataset, images, labels, age, sex, canned answer)
SAMPLES = {
    "c1": (
        "CheXpert",
        ["cxr/c1.png"],
        ["Edema", "Fracture"],
        71.0,
        "M",
        "<think>fluid and a broken rib</think> \\boxed{Edema, Fracture}",
    ),
    "c2": ("CheXpert", ["cxr/c2.png"], ["Edema", "Fracture"], 35.0, "F", "<think>fluid</think> \\boxed{Edema}"),
    "c3": ("CheXpert", ["cxr/c3.png"], ["No Finding"], 52.0, "M", "The lungs look clear: No Finding"),  # unboxed
    "c4": ("CheXpert", ["cxr/c4.png"], ["Cardiomegaly"], 80.0, "F", "<think>big heart</think> \\boxed{Cardiomegaly"),
    "h1": ("HAM10000", ["skin/h1.png"], ["Melanoma"], 44.0, "F", "<think>irregular</think> \\boxed{\\text{melanoma}}"),
    "h2": ("HAM10000", ["skin/h2.png"], ["Nevus"], float("nan"), None, "\\boxed{Freckle}"),  # not a label
    "b1": (
        "Hemorrhage",
        ["ct/b1_brain.png", "ct/b1_bone.png"],
        ["Has Hemorrhage"],
        60.0,
        "M",
        "<think>bleed</think> \\boxed{Has Hemorrhage}",
    ),
    "b2": (
        "Hemorrhage",
        ["ct/b2_brain.png", "ct/b2_bone.png"],
        ["No Hemorrhage"],
        25.0,
        "F",
        "<think>bleed</think> \\boxed{Has Hemorrhage}",
    ),
}
# sample_id -> (expected prediction, expected reward)
EXPECTED = {
    "c1": (["Edema", "Fracture"], 1.0),
    "c2": (["Edema"], 2 / 3),
    "c3": ([], 0.0),
    "c4": ([], 0.0),
    "h1": (["Melanoma"], 1.0),
    "h2": ([], 0.0),
    "b1": (["Has Hemorrhage"], 1.0),
    "b2": (["Has Hemorrhage"], 0.0),
}


@pytest.fixture
def export(tmp_path):
    """A test-split verl export (eqpo.data.export.to_verl) with real image files."""
    root = tmp_path / "data"
    rows = []
    for i, (sid, (dataset, images, labels, age, sex, _)) in enumerate(SAMPLES.items()):
        for rel in images:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8 + i, 8), (i * 20, 0, 0)).save(root / rel)
        rows.append(
            {
                "sample_id": sid,
                "patient_id": sid,
                "dataset": dataset,
                "split": "test",
                "images": images,
                "labels": labels,
                "age": age,
                "sex": sex,
                "group": None if sex is None else f"{sex}|a2",
            }
        )
    path = tmp_path / "verl" / "test.parquet"
    path.parent.mkdir()
    to_verl(pd.DataFrame(rows), root).to_parquet(path, index=False)
    return path


class FakeGenerator:
    """Answers with the canned text of each request's sample (found through its first image)."""

    def __init__(self, root):
        self.by_image = {str((root / images[0]).resolve()): answer for _, images, *_, answer in SAMPLES.values()}
        self.requests = None

    def generate(self, requests):
        self.requests = list(requests)
        return [self.by_image[ev.request_images(r)[0]] for r in requests]


VERL_MODEL = {"backend": "verl", "path": "google/medgemma-4b-it"}


# ----------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------


def test_requests_are_openai_chats_with_the_training_prompt_and_images(export):
    rows = pd.read_parquet(export)
    requests = ev.build_requests(export)
    assert len(requests) == len(rows) == len(SAMPLES)
    for request, row in zip(requests, rows.itertuples(), strict=False):
        (message,) = request
        assert message["role"] == "user"
        images = [p for p in message["content"] if p["type"] == "image_url"]
        assert [p["image_url"]["url"] for p in images] == [Path(p).as_uri() for p in row.images]
        assert all(p["image_url"]["url"].startswith("file:///") for p in images)
        text = "".join(p["text"] for p in message["content"] if p["type"] == "text")
        assert text == row.prompt[0]["content"].replace("<image>", "")
        assert ev.request_images(request) == list(row.images)
    json.dumps(requests)  # plain data: serialisable, nothing loaded yet


def test_requests_split_the_prompt_exactly_as_verls_dataset_does(export, tmp_path):
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create({"cache_dir": str(tmp_path / "cache"), "filter_overlong_prompts": False})
    # _build_messages only checks that a processor exists; it does not use it.
    dataset = RLHFDataset([str(export)], tokenizer=None, config=config, processor=object())
    for i, request in enumerate(ev.build_requests(export)):
        verl_content = dataset[i]["raw_prompt"][0]["content"]
        ours = [
            {"type": "image", "image": p["image_url"]["url"][len("file://") :]} if p["type"] == "image_url" else p
            for p in request[0]["content"]
        ]
        assert ours == verl_content


def test_request_errors_are_clear(export, tmp_path):
    rows = pd.read_parquet(export)
    bad = rows.copy()
    bad.at[0, "images"] = list(rows.at[0, "images"]) * 2
    with pytest.raises(ValueError, match="placeholders"):
        ev.build_requests(bad)
    bad = rows.copy()
    bad.at[0, "images"] = ["cxr/c1.png"]
    with pytest.raises(ValueError, match="not absolute"):
        ev.build_requests(bad)
    bad.at[0, "images"] = [str(tmp_path / "missing.png")]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ev.build_requests(bad)
    assert len(ev.build_requests(bad, check_files=False)) == len(rows)
    text_only = rows.copy()
    text_only.at[0, "images"] = []
    text_only.at[0, "prompt"] = [{"role": "user", "content": "question only"}]
    assert ev.build_requests(text_only)[0] == [{"role": "user", "content": "question only"}]
    with pytest.raises(ValueError, match="missing columns"):
        ev.build_requests(rows.drop(columns=["extra_info"]))


# ----------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------


def test_predictions_schema_and_values(export):
    rows = pd.read_parquet(export)
    outputs = [SAMPLES[info["sample_id"]][-1] for info in rows["extra_info"]]
    table = ev.predictions_from_outputs(rows, outputs)
    assert list(table.columns) == list(ev.PREDICTION_COLUMNS)
    assert list(table["sample_id"]) == list(SAMPLES)
    for row in table.itertuples():
        dataset, _, labels, age, sex, answer = SAMPLES[row.sample_id]
        prediction, reward = EXPECTED[row.sample_id]
        assert row.dataset == dataset and row.labels == labels and row.response == answer
        assert isinstance(row.prediction, list) and row.prediction == prediction
        assert row.reward == pytest.approx(reward)
        assert math.isnan(row.age) if math.isnan(age) else row.age == age
        assert pd.isna(row.sex) if sex is None else row.sex == sex
    assert table["age"].dtype == np.float64 and table["reward"].dtype == np.float64


def test_unparseable_answers_give_empty_predictions(export):
    rows = pd.read_parquet(export)
    junk = [None, "", "\\boxed{}", "\\boxed{Melanoma", "no box at all", "\\boxed{Edema}}}", "<think>", "\\boxed{??}"]
    table = ev.predictions_from_outputs(rows, junk)
    assert table["prediction"].map(len).tolist() == [0, 0, 0, 0, 0, 0, 0, 0]
    assert (table["reward"] == 0).all() and table.loc[0, "response"] == ""
    with pytest.raises(ValueError, match="3 answers for 8 export rows"):
        ev.predictions_from_outputs(rows, junk[:3])


def test_run_evaluation_with_a_fake_generator_feeds_score_predictions(export, tmp_path):
    generator = FakeGenerator(tmp_path / "data")
    out = tmp_path / "run" / "predictions.parquet"
    table = ev.run_evaluation(
        tmp_path / "no_checkpoint_needed", export, out, VERL_MODEL, generator=generator, log=lambda message: None
    )
    assert generator.requests == ev.build_requests(export)
    saved = pd.read_parquet(out)
    assert list(saved.columns) == list(ev.PREDICTION_COLUMNS) and len(saved) == len(SAMPLES)
    assert [list(p) for p in saved["prediction"]] == [EXPECTED[s][0] for s in SAMPLES]
    pd.testing.assert_series_equal(saved["reward"], table["reward"])
    metrics = score_predictions(out, tmp_path / "run" / "metrics.json", method="grpo", seed=0)
    assert metrics["unparseable_share"] == pytest.approx({"CheXpert": 0.5, "HAM10000": 0.5, "Hemorrhage": 0.0})
    assert set(metrics["summary"]) and json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == "grpo"


def test_evaluation_on_a_seeded_subset_of_the_test_split(export, tmp_path):
    """evaluation.max_samples: that many test rows, the same ones on every call, in export order."""
    rows = ev.read_export(export)
    generator = FakeGenerator(tmp_path / "data")
    out = tmp_path / "run" / "predictions.parquet"
    table = ev.run_evaluation(tmp_path, export, out, VERL_MODEL, generator=generator, log=lambda m: None, max_samples=3)
    assert len(generator.requests) == len(table) == 3
    chosen = list(table["sample_id"])
    assert len(set(chosen)) == 3 and set(chosen) <= set(rows["extra_info"].map(lambda e: e["sample_id"]))
    order = list(rows["extra_info"].map(lambda e: e["sample_id"]))
    assert chosen == sorted(chosen, key=order.index)
    assert list(ev.subsample(rows, 3)["extra_info"].map(lambda e: e["sample_id"])) == chosen
    assert ev.subsample(rows, len(rows) + 5) is rows and ev.subsample(rows, None) is rows
    with pytest.raises(ValueError, match="evaluation.max_samples must be >= 1"):
        ev.subsample(rows, 0)


def test_run_evaluation_rejects_a_non_verl_model(export, tmp_path):
    with pytest.raises(ValueError, match="verl-trained"):
        ev.run_evaluation(
            tmp_path,
            export,
            tmp_path / "p.parquet",
            {"backend": "cpu", "arch": "mlp"},
            generator=FakeGenerator(tmp_path / "data"),
        )


# ----------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------


def test_vllm_generator_settings_are_greedy_and_cover_the_images(export, tmp_path):
    requests = ev.build_requests(export)
    generator = ev.VLLMGenerator(tmp_path / "hf", max_tokens=512, max_model_len=4096, enforce_eager=True)
    kwargs = generator.engine_kwargs(requests)
    assert kwargs["model"] == str(tmp_path / "hf") and kwargs["tensor_parallel_size"] == 1
    assert kwargs["limit_mm_per_prompt"] == {"image": 2}  # the Hemorrhage rows have two slices
    assert kwargs["allowed_local_media_path"] == str((tmp_path / "data").resolve())
    assert kwargs["max_model_len"] == 4096 and kwargs["enforce_eager"] is True
    assert generator.sampling_kwargs() == {"n": 1, "temperature": 0.0, "max_tokens": 512}
    with pytest.raises(ValueError, match="tensor_parallel and max_tokens must be >= 1, got 0, 4096"):
        ev.VLLMGenerator(tmp_path, tensor_parallel=0)


def test_vllm_generator_calls_llm_chat(export, tmp_path, monkeypatch):
    calls = {}

    class LLM:
        def __init__(self, **kwargs):
            calls["engine"] = kwargs

        def chat(self, messages, sampling_params, **kwargs):
            calls["chat"] = (messages, sampling_params, kwargs)
            return [
                types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"answer {i}")]) for i in range(len(messages))
            ]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw))
    requests = ev.build_requests(export)
    texts = ev.VLLMGenerator(tmp_path / "hf", max_tokens=64).generate(requests)
    assert texts == [f"answer {i}" for i in range(len(requests))]
    messages, sampling, options = calls["chat"]
    assert messages == requests and sampling == {"n": 1, "temperature": 0.0, "max_tokens": 64}
    assert options == {"chat_template_content_format": "openai"}
    assert calls["engine"]["model"] == str(tmp_path / "hf")


def test_vllm_generator_without_vllm_says_so(export, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match="needs vLLM"):
        ev.VLLMGenerator(tmp_path).generate(ev.build_requests(export))


# ----------------------------------------------------------------------------------------------
# Checkpoint merging
# ----------------------------------------------------------------------------------------------


def _checkpoint(root: Path, step: int = 40, hf_weights: bool = False) -> Path:
    """A verl FSDP checkpoint layout with placeholder files; returns its actor dir."""
    actor = root / f"global_step_{step}" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    (actor / "model_world_size_2_rank_0.pt").write_bytes(b"")
    (actor / "model_world_size_2_rank_1.pt").write_bytes(b"")
    (actor / "huggingface" / "config.json").write_text("{}")
    (actor / "huggingface" / "preprocessor_config.json").write_text('{"image_processor_type": "x"}')
    (actor / "huggingface" / "chat_template.jinja").write_text("{{ messages }}")
    if hf_weights:
        (actor / "huggingface" / "model.safetensors").write_bytes(b"w")
    (root / ev.TRACKER).write_text(str(step))
    return actor


def test_merge_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(ev.CheckpointError, match="does not exist"):
        ev.merge_checkpoint(tmp_path / "nope", tmp_path / "hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ev.CheckpointError, match="saved no checkpoint"):
        ev.merge_checkpoint(tmp_path / "empty", tmp_path / "hf")
    (tmp_path / "empty" / "global_step_5").mkdir()
    with pytest.raises(ev.CheckpointError, match="global_step_5"):
        ev.merge_checkpoint(tmp_path / "empty", tmp_path / "hf")
    (tmp_path / "empty" / ev.TRACKER).write_text("last\n")
    with pytest.raises(ev.CheckpointError, match="step number"):
        ev.merge_checkpoint(tmp_path / "empty", tmp_path / "hf")
    (tmp_path / "empty" / ev.TRACKER).write_text("7\n")
    with pytest.raises(ev.CheckpointError, match="step 7"):
        ev.merge_checkpoint(tmp_path / "empty", tmp_path / "hf")
    (tmp_path / "empty" / "global_step_7" / "actor").mkdir(parents=True)
    with pytest.raises(ev.CheckpointError, match="neither FSDP model shards"):
        ev.merge_checkpoint(tmp_path / "empty", tmp_path / "hf")


def test_merge_checkpoint_runs_verls_merger_once_and_completes_the_processor(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    actor = _checkpoint(checkpoint, step=20)
    (checkpoint / "global_step_10" / "actor").mkdir(parents=True)  # an older step, not chosen
    target = tmp_path / "hf"
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"w")
        return types.SimpleNamespace(returncode=0, stdout="", stderr="")

    assert ev.merge_checkpoint(checkpoint, target, run=run) == target
    assert commands == [
        [
            sys.executable,
            "-m",
            "verl.model_merger",
            "merge",
            "--backend",
            "fsdp",
            "--local_dir",
            str(actor),
            "--target_dir",
            str(target),
        ]
    ]
    assert (target / "preprocessor_config.json").is_file() and (target / "chat_template.jinja").is_file()
    ev.require_image_processor(target)
    assert ev.merge_checkpoint(checkpoint, target, run=run) == target and len(commands) == 1  # reused


def test_merge_checkpoint_reports_a_failed_merger(tmp_path):
    _checkpoint(tmp_path / "checkpoint")

    def failing(command, **kwargs):
        return types.SimpleNamespace(returncode=1, stdout="", stderr="Traceback ...\nKeyError: 'lm_head.weight'")

    with pytest.raises(RuntimeError, match="lm_head.weight"):
        ev.merge_checkpoint(tmp_path / "checkpoint", tmp_path / "hf", run=failing)
    with pytest.raises(RuntimeError, match="no Hugging Face weights"):
        ev.merge_checkpoint(
            tmp_path / "checkpoint",
            tmp_path / "hf",
            run=lambda command, **kw: types.SimpleNamespace(returncode=0, stdout="", stderr=""),
        )


def test_full_hf_weights_in_the_checkpoint_skip_the_merger(tmp_path):
    actor = _checkpoint(tmp_path / "checkpoint", hf_weights=True)

    def never(*args, **kwargs):
        raise AssertionError("the merger should not run")

    assert ev.merge_checkpoint(tmp_path / "checkpoint", tmp_path / "hf", run=never) == actor / "huggingface"
    (actor / "huggingface" / "preprocessor_config.json").unlink()
    with pytest.raises(ev.CheckpointError, match="cannot process images"):
        ev.require_image_processor(actor / "huggingface")


def test_merge_command_is_accepted_by_verls_own_parser(tmp_path, monkeypatch):
    pytest.importorskip("verl")
    from verl.model_merger.base_model_merger import generate_config_from_args, parse_args

    actor, target = tmp_path / "global_step_3" / "actor", tmp_path / "merged"
    command = ev.merge_command(actor, target)
    assert command[1:3] == ["-m", "verl.model_merger"]
    monkeypatch.setattr(sys, "argv", ["verl.model_merger", *command[3:]])
    args = parse_args()
    assert (args.operation, args.backend, args.local_dir, args.target_dir) == ("merge", "fsdp", str(actor), str(target))
    config = generate_config_from_args(args)
    assert config.hf_model_config_path == str(actor / "huggingface")


def test_verl_model_merger_cli_answers_help():
    pytest.importorskip("verl")
    result = subprocess.run(
        [sys.executable, "-m", "verl.model_merger", "merge", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--backend", "--local_dir", "--target_dir"):
        assert flag in result.stdout
