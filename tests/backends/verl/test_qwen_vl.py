"""Qwen2.5-VL and Qwen3-VL (QoQ-Med3-VL-8B's architecture) through verl 0.9.1, on CPU without downloads.

For each family a tiny randomly initialised ``*ForConditionalGeneration`` (2 text layers, a 1-2 block
vision tower, 56x56 images -> 4 image tokens) and its processor (a byte-level tokenizer built with
`tokenizers`, the Qwen special tokens, the PIL Qwen2-VL image processor with small min/max pixels,
a Qwen-style chat template) are saved to a directory, which stands in for the hub checkpoint.
verl supports both processors natively (``hf_processor`` binds ``get_rope_index``), so nothing is
patched here. QoQ-Med3-VL-8B is taken to be a Qwen3-VL-8B fine-tune: the QoQ-Med authors' README
lists its base as Qwen3-VL-8B (its config.json could not be read offline).

Checked: (a) verl's ``hf_processor`` returns the processor; (b) one row of our verl export goes
through verl's ``RLHFDataset`` -> VL prompt builder -> agent-loop features and M-RoPE positions, with
one ``<|image_pad|>`` per merged patch and the processor's own pixel values; (c) the tiny model,
loaded as verl's FSDP engine loads it, gives finite logits with verl's (4, L) positions, equal to
the model's own position computation; (d) our overrides for the paper run compose with verl's
Hydra config with the model path pointing at the tiny checkpoint. Not checked (needs GPUs, vLLM,
torchvision): the real checkpoints, vLLM rollout, ``qwen_vl_utils.fetch_image`` (images are opened
with PIL here) and the video processor (every transformers video processor needs torchvision, so
while it is absent ``AutoVideoProcessor`` returns an inert stand-in; see video_processor_stand_in).
"""

from __future__ import annotations

import copy
import types
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

pytest.importorskip("verl")
pytest.importorskip("tokenizers")

from eqpo.data.export import to_verl  # noqa: E402

from tiny_models import IMAGE_PAD, MERGE, QWEN_CHAT_TEMPLATE, VISION_END, VISION_START, qwen_tokenizer, tiny_qwen_config  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
PAPER = yaml.safe_load((REPO / "config.yaml").read_text())

# family -> (paper model key, processor class, model class, verl model_type, vision patch size)
FAMILIES = {
    "qwen2_5_vl": ("qwen2.5-vl-7b", "Qwen2_5_VLProcessor", "Qwen2_5_VLForConditionalGeneration", 14),
    "qwen3_vl": ("qoq-med3-vl-8b", "Qwen3VLProcessor", "Qwen3VLForConditionalGeneration", 16),
}


def _has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="module", autouse=True)
def video_processor_stand_in():
    """Both processors require a video processor, and every transformers video processor requires
    torchvision, which this CPU environment lacks (the GPU one has it, for vLLM). Without it
    ``AutoProcessor`` (hence verl's ``hf_processor``) fails on any Qwen-VL checkpoint, so while
    torchvision is absent ``AutoVideoProcessor`` hands back an inert stand-in; images never touch it."""
    if _has_torchvision():
        yield None
        return
    import transformers
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor
    from transformers.utils import PushToHubMixin

    class NoVideo(transformers.BaseVideoProcessor, PushToHubMixin):  # the class ProcessorMixin checks against
        def __init__(self):  # BaseVideoProcessor.__init__ needs torchvision
            pass

        def to_dict(self):
            return {"video_processor_type": "none: torchvision is absent"}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AutoVideoProcessor, "from_pretrained", classmethod(lambda cls, *a, **kw: NoVideo()))
        yield NoVideo


def _save_processor(family: str, tokenizer, path: Path) -> None:
    """Tokenizer, PIL image processor (small min/max pixels) and chat template, as files in ``path``."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    patch = FAMILIES[family][3]
    side = patch * MERGE * 2  # every image becomes a 4x4 patch grid -> 4 merged image tokens
    images = Qwen2VLImageProcessorPil(
        size={"shortest_edge": side * side, "longest_edge": side * side},
        patch_size=patch,
        merge_size=MERGE,
        temporal_patch_size=2,
    )
    tokenizer.save_pretrained(path)
    images.save_pretrained(path)
    (path / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory, video_processor_stand_in):
    """A directory with a tiny checkpoint of the family and its processor (verl's model.path)."""
    import transformers

    family = request.param
    path = tmp_path_factory.mktemp(family)
    tokenizer = qwen_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        getattr(transformers, FAMILIES[family][2])(tiny_qwen_config(family, tokenizer)).save_pretrained(path)
        _save_processor(family, tokenizer, path)
    return types.SimpleNamespace(family=family, path=path)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    from verl.utils import hf_processor, hf_tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = hf_processor(str(checkpoint.path))
    return types.SimpleNamespace(**vars(checkpoint), processor=processor, tokenizer=hf_tokenizer(str(checkpoint.path)))


@pytest.fixture(scope="module")
def trajectory(loaded, tmp_path_factory):
    """One row of our verl export through RLHFDataset, verl's VL prompt builder and the agent loop's
    feature and position computation, with a response appended."""
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    if loaded.processor is None:
        pytest.skip("verl's hf_processor returned None (see test_verl_hf_processor_returns_the_qwen_processor)")
    root = tmp_path_factory.mktemp(f"export_{loaded.family}")
    (root / "img").mkdir()
    Image.new("RGB", (50, 50), (200, 10, 10)).save(root / "img" / "a.png")
    cohort = pd.DataFrame(
        {
            "sample_id": ["a"],
            "dataset": ["HAM10000"],
            "split": ["test"],
            "images": [["img/a.png"]],
            "labels": [["Melanoma"]],
            "age": [40.0],
            "sex": ["F"],
            "group": ["F|a2"],
        }
    )
    to_verl(cohort, root).to_parquet(root / "test.parquet")
    config = OmegaConf.create({"prompt_key": "prompt", "image_key": "images", "filter_overlong_prompts": False})
    dataset = RLHFDataset([str(root / "test.parquet")], loaded.tokenizer, config, processor=loaded.processor)
    messages = dataset[0]["raw_prompt"]
    # verl loads images with qwen_vl_utils.fetch_image, which needs torchvision (absent here): use PIL.
    images = [Image.open(messages[0]["content"][0]["image"]).convert("RGB")]
    builder = create_continuous_token_builder(loaded.tokenizer, hf_model_type=loaded.family, processor=loaded.processor)
    prompt_ids = builder.build_initial_tokens(messages, images=images)
    response_ids = loaded.tokenizer.encode("<think>a dark spot</think> \\boxed{Melanoma}", add_special_tokens=False)
    ids = torch.tensor(prompt_ids + response_ids + [loaded.tokenizer.eos_token_id])

    worker = types.SimpleNamespace(
        processor=loaded.processor, tokenizer=loaded.tokenizer, _get_mm_processor_kwargs=lambda audio=None: {}
    )
    compute = AgentLoopWorker._compute_multi_modal_inputs
    compute = getattr(compute, "__wrapped__", compute)  # verl's own (eqpo's Gemma3 patch defers to it anyway)
    output = types.SimpleNamespace(multi_modal_data={"images": images}, mm_processor_kwargs=None)
    features = compute(worker, output, ids)
    positions = AgentLoopWorker._compute_position_ids(worker, ids[None], torch.ones_like(ids)[None], dict(features))
    return types.SimpleNamespace(
        ids=ids, prompt_len=len(prompt_ids), images=images, messages=messages, features=features, positions=positions
    )


def test_verl_hf_processor_returns_the_qwen_processor(loaded):
    """(a) verl's hf_processor knows both processors and binds the model's M-RoPE index."""
    assert loaded.processor is not None, "verl's hf_processor returned None (its warning names the cause)"
    assert type(loaded.processor).__name__ == FAMILIES[loaded.family][1]
    assert loaded.processor.config.model_type == loaded.family
    assert callable(loaded.processor.get_rope_index)
    assert loaded.processor.image_token == IMAGE_PAD
    assert loaded.processor.image_token_id == loaded.tokenizer.convert_tokens_to_ids(IMAGE_PAD)


def test_export_row_reaches_prompt_ids_with_one_pad_per_merged_patch(loaded, trajectory):
    """(b) our export -> RLHFDataset -> verl's prompt builder and agent-loop features."""
    processor = loaded.processor
    content = trajectory.messages[0]["content"]
    assert [item["type"] for item in content] == ["image", "text"]
    text = processor.apply_chat_template(trajectory.messages, tokenize=False, add_generation_prompt=True)
    reference = processor(text=[text], images=trajectory.images, return_tensors="pt")
    assert reference["input_ids"][0].tolist() == trajectory.ids[: trajectory.prompt_len].tolist()

    grid = trajectory.features["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 4]]
    n_pad = int((trajectory.ids == processor.image_token_id).sum())
    assert n_pad == int(grid.prod()) // MERGE**2 == 4
    ids = trajectory.ids.tolist()
    start = ids.index(loaded.tokenizer.convert_tokens_to_ids(VISION_START))
    # pads are contiguous between the markers
    assert ids[start + 1 + n_pad] == loaded.tokenizer.convert_tokens_to_ids(VISION_END)

    patch = FAMILIES[loaded.family][3]
    pixels = trajectory.features["pixel_values"]
    assert pixels.shape == (int(grid.prod()), 3 * 2 * patch * patch)
    assert torch.equal(pixels, reference["pixel_values"])
    assert torch.equal(grid, reference["image_grid_thw"])
    assert trajectory.positions.shape == (1, 4, len(ids))  # verl: text positions + (t, h, w) M-RoPE


@pytest.fixture(scope="module")
def model(loaded):
    """The tiny model loaded the way verl's FSDP engine loads it (auto class from the config)."""
    from transformers import AutoConfig
    from verl.utils.model import get_hf_auto_model_class

    config = AutoConfig.from_pretrained(str(loaded.path), attn_implementation="sdpa")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = get_hf_auto_model_class(config).from_pretrained(str(loaded.path), config=config)
    assert type(module).__name__ == FAMILIES[loaded.family][2]
    return module.eval()


def test_forward_on_cpu_gives_finite_logits_with_verls_positions(trajectory, model):
    """(c) a forward pass with verl's features and (4, 1, L) position ids."""
    inputs = {k: v for k, v in trajectory.features.items() if k in ("pixel_values", "image_grid_thw")}
    ids = trajectory.ids[None]
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=trajectory.positions.transpose(0, 1), **inputs).logits
        # the model's own M-RoPE positions, from the processor's mm_token_type_ids (1 on image pads)
        mm_token_type_ids = (ids == model.config.image_token_id).long()
        own = model(input_ids=ids, mm_token_type_ids=mm_token_type_ids, **inputs).logits
        text_only = model(input_ids=ids).logits
    assert logits.shape == (1, len(trajectory.ids), model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, own, rtol=1e-5, atol=1e-6)  # verl's positions = the model's own
    assert (logits - text_only).abs().max() > 1e-4  # the image features are used


def _compose(overrides):
    import importlib.util

    from hydra import compose, initialize_config_dir

    config_dir = Path(importlib.util.find_spec("verl").submodule_search_locations[0]) / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def test_paper_overrides_with_the_local_checkpoint_compose_with_verls_config(checkpoint, tmp_path):
    """(d) build_overrides for this model, model path -> the tiny checkpoint, through Hydra."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from eqpo.backends.verl.launch import RunPaths, build_overrides
    from eqpo.runs.settings import RunSettings

    model_key = FAMILIES[checkpoint.family][0]
    config = copy.deepcopy(PAPER)
    config["models"][model_key]["path"] = str(checkpoint.path)
    overrides = build_overrides(
        RunSettings.from_config(config, model_key, "eqpo"), 0, RunPaths.for_run(tmp_path / "run"), tmp_path / "data"
    )
    cfg = _compose(overrides)
    assert cfg.actor_rollout_ref.model.path == str(checkpoint.path)
    assert cfg.data.image_key == "images" and cfg.actor_rollout_ref.rollout.name == "vllm"
    OmegaConf.to_container(cfg, resolve=True)
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
