"""MedGemma (Gemma3) support in verl 0.9.1 (eqpo.backends.verl.gemma3), on CPU without downloads.

A tiny randomly initialised Gemma3ForConditionalGeneration (2 text layers, 1 SigLIP layer, 32x32
images, 4 tokens per image) and a Gemma3Processor assembled here (a byte-level tokenizer built with
`tokenizers`, Gemma3's special tokens, a Gemma3 image processor, a Gemma-style chat template) stand
in for MedGemma. The data path is verl's own: our export -> RLHFDataset raw_prompt -> verl's VL
prompt builder -> the (patched) agent-loop features -> the FSDP engine's prepare_model_inputs.
"""

import types
import warnings

import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("verl")
tokenizers = pytest.importorskip("tokenizers")

from eqpo.backends.verl import gemma3  # noqa: E402
from eqpo.data.export import to_verl  # noqa: E402

import tiny_models  # noqa: E402

BOI, EOI, NEWLINES = tiny_models.GEMMA3_BOI, tiny_models.GEMMA3_EOI, tiny_models.GEMMA3_NEWLINES
CHAT_TEMPLATE, TOKENS_PER_IMAGE = tiny_models.GEMMA3_CHAT_TEMPLATE, tiny_models.GEMMA3_TOKENS_PER_IMAGE
_tiny_tokenizer, _tiny_model_config = tiny_models.gemma3_tokenizer, tiny_models.tiny_gemma3_config


@pytest.fixture(scope="module")
def medgemma(tmp_path_factory):
    """A directory with a tiny Gemma3 checkpoint and its processor (what verl gets as model.path)."""
    from transformers import Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    path = tmp_path_factory.mktemp("tiny_medgemma")
    tokenizer = _tiny_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        Gemma3ForConditionalGeneration(_tiny_model_config(tokenizer)).save_pretrained(path)
        processor = Gemma3Processor(
            image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE,
            image_seq_length=TOKENS_PER_IMAGE,
        )
        processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def patched(medgemma):
    gemma3.patch_verl_for_gemma3()
    from verl.utils import hf_processor, hf_tokenizer

    return types.SimpleNamespace(
        path=medgemma, processor=hf_processor(str(medgemma)), tokenizer=hf_tokenizer(str(medgemma))
    )


@pytest.fixture(scope="module")
def trajectories(patched, tmp_path_factory):
    """Two rows of our verl export through verl's RLHFDataset and VL prompt builder, each with a
    response appended: (input_ids (L,), images, prompt length)."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    root = tmp_path_factory.mktemp("export")
    (root / "img").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "img" / "a.png")
    Image.new("RGB", (30, 50), (10, 200, 90)).save(root / "img" / "b.png")
    cohort = pd.DataFrame(
        {
            "sample_id": ["a", "b"],
            "dataset": ["HAM10000", "ISIC-2020"],
            "split": ["test", "test"],
            "images": [["img/a.png"], ["img/b.png"]],
            "labels": [["Melanoma"], ["Benign"]],
            "age": [40.0, 70.0],
            "sex": ["F", "M"],
            "group": ["F|a2", "M|a4"],
        }
    )
    to_verl(cohort, root).to_parquet(root / "test.parquet")
    config = OmegaConf.create({"prompt_key": "prompt", "image_key": "images", "filter_overlong_prompts": False})
    dataset = RLHFDataset([str(root / "test.parquet")], patched.tokenizer, config, processor=patched.processor)
    builder = create_continuous_token_builder(patched.tokenizer, hf_model_type="gemma3", processor=patched.processor)
    out = []
    for i, response in enumerate(["<think>spots</think> \\boxed{Nevus}", "\\boxed{Benign}"]):
        messages = dataset[i]["raw_prompt"]
        # verl loads images with qwen_vl_utils.fetch_image, which needs torchvision (absent on this
        # CPU setup): open them with PIL instead.
        images = [Image.open(messages[0]["content"][0]["image"]).convert("RGB")]
        prompt_ids = builder.build_initial_tokens(messages, images=images)
        response_ids = patched.tokenizer.encode(response, add_special_tokens=False) + [patched.tokenizer.eos_token_id]
        out.append(
            types.SimpleNamespace(
                ids=torch.tensor(prompt_ids + response_ids),
                images=images,
                prompt_len=len(prompt_ids),
                messages=messages,
            )
        )
    return out


def _features(processor, trajectory):
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    worker = types.SimpleNamespace(processor=processor, _get_mm_processor_kwargs=lambda audio=None: {})
    output = types.SimpleNamespace(multi_modal_data={"images": trajectory.images}, mm_processor_kwargs=None)
    return AgentLoopWorker._compute_multi_modal_inputs(worker, output, trajectory.ids)


def _micro_batch(samples, pad_token_id):
    """A micro-batch as the v1 trainer hands it to the engine (unpadded nested input_ids)."""
    from verl.utils import tensordict_utils as tu

    td = tu.list_of_dict_to_tensordict(
        [{"input_ids": ids, "position_ids": torch.arange(len(ids)), "multi_modal_inputs": mm} for ids, mm in samples]
    )
    td["temperature"] = torch.ones(len(samples))
    tu.assign_non_tensor(td, use_remove_padding=False, pad_token_id=pad_token_id)
    return td


def _engine_inputs(micro_batch):
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    inputs, _ = FSDPEngineWithLMHead.prepare_model_inputs(types.SimpleNamespace(pad_to_length=None), micro_batch)
    return inputs


@pytest.fixture(scope="module")
def model(patched):
    """The tiny model loaded the way verl's FSDP engine loads it (auto class from the config, sdpa)."""
    from transformers import AutoConfig
    from verl.utils.model import get_hf_auto_model_class

    config = AutoConfig.from_pretrained(str(patched.path), attn_implementation="sdpa")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = get_hf_auto_model_class(config).from_pretrained(str(patched.path), config=config)
    assert type(module).__name__ == "Gemma3ForConditionalGeneration"
    assert module.config._attn_implementation == "sdpa"
    return module.eval()


def test_hf_processor_rejects_gemma3_before_the_patch_and_returns_it_after(medgemma):
    with pytest.warns(UserWarning, match="Unsupported processor type: Gemma3Processor"):
        assert gemma3.original_hf_processor(str(medgemma)) is None
    gemma3.patch_verl_for_gemma3()
    import verl.utils
    import verl.utils.tokenizer
    import verl.workers.config.model as model_config

    for hf_processor in (verl.utils.hf_processor, verl.utils.tokenizer.hf_processor, model_config.hf_processor):
        processor = hf_processor(str(medgemma))
        assert type(processor).__name__ == "Gemma3Processor"
        assert processor.config.model_type == "gemma3" and not hasattr(processor, "get_rope_index")
    assert gemma3.is_patched()


def test_patch_is_idempotent_and_leaves_other_checkpoints_to_verl(medgemma, tmp_path, monkeypatch):
    from transformers import LlamaConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3Model
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    gemma3.patch_verl_for_gemma3()
    gemma3.patch_verl_for_gemma3()
    for patched in (Gemma3Model.forward, AgentLoopWorker._compute_multi_modal_inputs):
        assert gemma3._MARK in vars(patched) and gemma3._MARK not in vars(patched.__wrapped__)  # wrapped once
    assert not getattr(gemma3._original_hf_processor, gemma3._MARK, False)

    LlamaConfig(vocab_size=300, hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(tmp_path)
    calls = []
    monkeypatch.setattr(gemma3, "_original_hf_processor", lambda path, **kw: calls.append(path) or "verl's answer")
    assert gemma3.hf_processor_with_gemma3(str(tmp_path)) == "verl's answer" and calls == [str(tmp_path)]
    assert type(gemma3.hf_processor_with_gemma3(str(medgemma))).__name__ == "Gemma3Processor" and len(calls) == 1


def test_verl_prompt_and_trajectory_features_match_the_processor(patched, trajectories):
    processor = patched.processor
    for trajectory in trajectories:
        text = processor.apply_chat_template(trajectory.messages, tokenize=False, add_generation_prompt=True)
        reference = processor(text=[text], images=trajectory.images, return_tensors="pt")
        assert reference["input_ids"][0].tolist() == trajectory.ids[: trajectory.prompt_len].tolist()
        features = _features(processor, trajectory)
        assert set(features) == {"pixel_values", "token_type_ids"}
        assert torch.equal(features["pixel_values"], reference["pixel_values"])
        token_type_ids = features["token_type_ids"]
        assert token_type_ids.shape == (1, len(trajectory.ids))  # one entry per prompt + response token
        assert torch.equal(token_type_ids[0, : trajectory.prompt_len], reference["token_type_ids"][0])
        assert int(token_type_ids.sum()) == TOKENS_PER_IMAGE and not token_type_ids[0, trajectory.prompt_len :].any()


def _replace_token_matches(ids, match, new):
    """Each non-overlapping occurrence of ``match`` in ``ids`` (left to right) replaced by ``new``."""
    out, i = [], 0
    while i < len(ids):
        if ids[i : i + len(match)] == match:
            out += new
            i += len(match)
        else:
            out.append(ids[i])
            i += 1
    return out


def vllm_gemma3_prompt(prompt_ids, processor, num_images):
    """What vLLM 0.24 makes of a Gemma3 token prompt with ``num_images`` images (no pan-and-scan),
    replayed from its source: a token prompt counts as not yet expanded (multimodal/processing/
    processor.py, ``_apply_hf_processor_main``: tokens_only -> is_update_applied=False), so each image
    replaces the next ``<start_of_image>`` with the tokens of ``processor.full_image_sequence``
    (gemma3_mm.py ``_get_prompt_updates``/``get_image_repl``; processor.py ``_apply_matches`` and
    ``_seq2tokens``, add_special_tokens=False), then newline pairs are merged into Gemma's single
    tokens (gemma3_mm.py ``_apply_token_matches``)."""
    tokenizer = processor.tokenizer
    boi = tokenizer.convert_tokens_to_ids(processor.boi_token)
    block = tokenizer.encode(processor.full_image_sequence, add_special_tokens=False)
    out, found = [], 0
    for token in prompt_ids:
        if token == boi and found < num_images:
            out += block
            found += 1
        else:
            out.append(token)
    assert found == num_images  # vLLM raises when an image has no placeholder
    vocab = tokenizer.get_vocab()
    n1, n2, n3, n4 = (vocab[n] for n in NEWLINES)
    for match, new in (([n1, n2], [n3]), ([n2, n1], [n3]), ([n2, n2], [n4])):
        out = _replace_token_matches(out, match, new)
    return out


def test_vllm_expands_the_rollout_prompt_back_to_verls_ids_with_one_image_block(patched, trajectories):
    """verl's vLLM server passes the prompt through qwen2_5_vl_dedup_image_tokens (bound by name at
    its import); patched, a Gemma3 prompt reaches vLLM collapsed, and vLLM's expansion of it equals
    verl's prompt ids (what the actor trains on) token for token, with exactly one image block."""
    from verl.workers.rollout import utils as rollout_utils

    send = rollout_utils.qwen2_5_vl_dedup_image_tokens
    processor, image = patched.processor, patched.processor.image_token_id
    newline_3 = patched.tokenizer.convert_tokens_to_ids("\n\n\n")
    for trajectory in trajectories:
        verl_ids = trajectory.ids[: trajectory.prompt_len].tolist()
        assert newline_3 in verl_ids  # "user\n" + the block's "\n\n" is one token: the merge is exercised
        sent = send(verl_ids, processor)
        assert sent.count(processor.tokenizer.convert_tokens_to_ids(BOI)) == 1 and image not in sent
        seen = vllm_gemma3_prompt(sent, processor, len(trajectory.images))
        assert seen == verl_ids
        assert seen.count(image) == TOKENS_PER_IMAGE and seen.count(processor.tokenizer.convert_tokens_to_ids(EOI)) == 1
        # verl's own function sends the expanded ids: vLLM would see a second, text-embedded block
        doubled = vllm_gemma3_prompt(send.__wrapped__(verl_ids, processor), processor, len(trajectory.images))
        assert doubled.count(image) == 2 * TOKENS_PER_IMAGE


def test_rollout_prompt_patch_rebinds_importers_and_leaves_qwen_to_verl(patched):
    import sys

    from verl.workers.rollout import utils as rollout_utils

    original = rollout_utils.qwen2_5_vl_dedup_image_tokens.__wrapped__
    importer = types.ModuleType("verl._eqpo_test_importer")  # a verl module that imported verl's function
    importer.qwen2_5_vl_dedup_image_tokens = original
    sys.modules[importer.__name__] = importer
    try:
        gemma3.patch_verl_for_gemma3()
        assert importer.qwen2_5_vl_dedup_image_tokens is rollout_utils.qwen2_5_vl_dedup_image_tokens
        assert rollout_utils.qwen2_5_vl_dedup_image_tokens.__wrapped__ is original and gemma3.is_patched()
    finally:
        del sys.modules[importer.__name__]

    class Qwen2VLImageProcessorFast:
        pass

    qwen = types.SimpleNamespace(image_processor=Qwen2VLImageProcessorFast(), image_token_id=5, video_token_id=6)
    assert rollout_utils.qwen2_5_vl_dedup_image_tokens([1, 5, 5, 5, 2, 6, 6], qwen) == [1, 5, 2, 6]
    assert rollout_utils.qwen2_5_vl_dedup_image_tokens([1, 2], None) == [1, 2]


def test_image_tokens_outside_a_block_refuse_the_rollout(patched, trajectories):
    processor = patched.processor
    ids = trajectories[0].ids[: trajectories[0].prompt_len].tolist()
    assert gemma3.gemma3_unexpanded_prompt_ids([2, 5, 6], processor) == [2, 5, 6]  # no image: unchanged
    with pytest.raises(ValueError, match="pan-and-scan"):
        gemma3.gemma3_unexpanded_prompt_ids(ids + [processor.image_token_id], processor)


def test_unpatched_agent_loop_cannot_rebuild_gemma3_features(patched, trajectories):
    """verl's own path decodes with skip_special_tokens, which drops <start_of_image> here."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    original = AgentLoopWorker._compute_multi_modal_inputs.__wrapped__
    worker = types.SimpleNamespace(
        processor=patched.processor, tokenizer=patched.tokenizer, _get_mm_processor_kwargs=lambda audio=None: {}
    )
    output = types.SimpleNamespace(multi_modal_data={"images": trajectories[0].images}, mm_processor_kwargs=None)
    with pytest.raises(ValueError, match="image tokens"):
        original(worker, output, trajectories[0].ids)


def test_image_token_count_mismatch_is_a_clear_error(patched, trajectories):
    text_only = patched.tokenizer("no image here", return_tensors="pt")["input_ids"][0]
    with pytest.raises(ValueError, match="0 image tokens"):
        gemma3.gemma3_multi_modal_inputs(patched.processor, text_only, trajectories[0].images)
    assert gemma3.gemma3_multi_modal_inputs(patched.processor, text_only, []) == {}


def test_engine_keeps_token_type_ids_per_sample_and_aligned(patched, trajectories, monkeypatch):
    from verl.utils import model as model_utils

    samples = [(t.ids, _features(patched.processor, t)) for t in trajectories]
    assert len(trajectories[0].ids) != len(trajectories[1].ids)
    batch = _micro_batch(samples, patched.tokenizer.pad_token_id)
    inputs = _engine_inputs(batch)
    assert inputs["token_type_ids"].shape == inputs["input_ids"].shape
    expected = gemma3.gemma3_token_type_ids(inputs["input_ids"], patched.processor.image_token_id)
    assert torch.equal(inputs["token_type_ids"], expected)  # right-padded exactly like input_ids
    assert inputs["pixel_values"].shape[0] == 2
    assert inputs["attention_mask"].sum().item() == sum(len(t.ids) for t in trajectories)
    # without the variable-length key verl 0.9.1 cannot batch them
    without = model_utils._VARLEN_MULTI_MODAL_KEYS - {"token_type_ids"}
    monkeypatch.setattr(model_utils, "_VARLEN_MULTI_MODAL_KEYS", without)
    with pytest.raises(RuntimeError, match="token_type_ids"):
        _engine_inputs(_micro_batch(samples, patched.tokenizer.pad_token_id))


def test_forward_is_finite_padding_invariant_and_image_bidirectional(patched, trajectories, model):
    processor = patched.processor
    pad_row = (torch.full((8,), patched.tokenizer.eos_token_id), {})  # verl's synthetic padding sample
    samples = [
        (trajectories[0].ids, _features(processor, trajectories[0])),
        pad_row,
        (trajectories[1].ids, _features(processor, trajectories[1])),
    ]
    inputs = _engine_inputs(_micro_batch(samples, patched.tokenizer.pad_token_id))
    assert inputs["token_type_ids"].shape[0] == 2 < inputs["input_ids"].shape[0]  # the padding row has none
    with torch.no_grad():
        logits = model(**inputs).logits
        assert torch.isfinite(logits).all()
        for row, trajectory in ((0, trajectories[0]), (2, trajectories[1])):
            features = _features(processor, trajectory)
            alone = model(
                input_ids=trajectory.ids[None],
                pixel_values=features["pixel_values"],
                token_type_ids=features["token_type_ids"],
            ).logits[0]
            torch.testing.assert_close(logits[row, : len(trajectory.ids)], alone, rtol=1e-4, atol=1e-4)
        # token_type_ids matter: a causal-only mask changes the image positions' outputs
        first = trajectories[0]
        features = _features(processor, first)
        causal = model(
            input_ids=first.ids[None],
            pixel_values=features["pixel_values"],
            token_type_ids=torch.zeros_like(features["token_type_ids"]),
        ).logits[0]
        is_image = features["token_type_ids"][0].bool()
        assert (logits[0, : len(first.ids)][is_image] - causal[is_image]).abs().max() > 1e-4


def test_gemma3_overrides_compose_with_verls_config():
    import os

    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name="ppo_trainer", overrides=list(gemma3.GEMMA3_OVERRIDES))
        with pytest.raises(Exception, match="Could not override"):
            compose(config_name="ppo_trainer", overrides=["actor_rollout_ref.model.no_such_key=1"])
    model = config.actor_rollout_ref.model
    assert model.override_config.attn_implementation == "sdpa"
    assert model.use_remove_padding is False and model.use_fused_kernels is False
