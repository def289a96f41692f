"""Tiny tokenizers and Qwen-VL and Gemma3 configs built locally (no downloads), shared by the verl tests
(tests/verl/test_qwen_vl.py, test_gemma3.py) and the trl backend's tests (tests/trl/conftest.py).

The tokenizers are byte-level BPE without merges: every text round-trips exactly, and the model's
special tokens (chat turns, image placeholders) are single added tokens.
"""

from __future__ import annotations

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MERGE = 2  # the vision tower's spatial merge: 2x2 patches -> one image token


def byte_level_tokenizer(specials, unk_token: str | None = None, **tokens):
    """A ``PreTrainedTokenizerFast``: the special tokens first, then the 256 byte symbols; ``tokens``
    (eos_token=..., pad_token=..., extra_special_tokens=...) go to the tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if unk_token is not None:
        tokens["unk_token"] = unk_token
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


def qwen_tokenizer():
    """The Qwen chat and vision special tokens over byte-level BPE."""
    return byte_level_tokenizer(QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def qwen_token_ids(tokenizer) -> dict:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", IMAGE_PAD), ("video_token_id", VIDEO_PAD),
        ("vision_start_token_id", VISION_START), ("vision_end_token_id", VISION_END))}
    assert len(set(ids.values())) == 4
    return ids


def qwen_text_config(tokenizer, mrope_section, max_position_embeddings: int = 1024, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                max_position_embeddings=max_position_embeddings,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section,
                                 **extra})


QWEN_ARCHITECTURES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                      "qwen3_vl": "Qwen3VLForConditionalGeneration"}


def tiny_qwen_config(family: str, tokenizer, max_position_embeddings: int = 1024):
    """A tiny config of ``family`` (qwen2_5_vl or qwen3_vl): 2 text layers of width 32, head_dim 16
    -> 8 rotary frequencies split over (t, h, w); one (Qwen2.5-VL) or two (Qwen3-VL) vision blocks."""
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config

        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                      spatial_merge_size=MERGE, temporal_patch_size=2, out_hidden_size=32, window_size=56,
                      fullatt_block_indexes=[0])
        text = qwen_text_config(tokenizer, [2, 3, 3], max_position_embeddings)
    else:
        from transformers import Qwen3VLConfig as Config

        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                      spatial_merge_size=MERGE, temporal_patch_size=2, out_hidden_size=32,
                      num_position_embeddings=16, deepstack_visual_indexes=[0])
        text = qwen_text_config(tokenizer, [4, 2, 2], max_position_embeddings, mrope_interleaved=True)
    config = Config(text_config=text, vision_config=vision, **qwen_token_ids(tokenizer))
    config.architectures = [QWEN_ARCHITECTURES[family]]
    return config


# Gemma3 (MedGemma): tests/verl/test_gemma3.py and the verl loop tests.
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
GEMMA3_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", BOI, EOI, IMAGE]
GEMMA3_TOKENS_PER_IMAGE = 4
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def gemma3_tokenizer():
    """Gemma3's chat and image special tokens over byte-level BPE."""
    return byte_level_tokenizer(
        GEMMA3_SPECIALS, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE},
    )


def tiny_gemma3_config(tokenizer):
    """A tiny Gemma3 (MedGemma's architecture): 2 text layers of width 32 (one sliding, one full
    attention), one SigLIP layer on 32x32 images, 4 tokens per image."""
    from transformers import Gemma3Config
    from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig
    from transformers.models.siglip.configuration_siglip import SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, sliding_window=512,
        layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16,
    )
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8)
    config = Gemma3Config(
        text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=GEMMA3_TOKENS_PER_IMAGE,
        boi_token_index=tokenizer.convert_tokens_to_ids(BOI), eoi_token_index=tokenizer.convert_tokens_to_ids(EOI),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    return config
