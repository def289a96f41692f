"""Tiny tokenizers and Qwen-VL and Gemma3 configs built locally (no downloads), shared by the verl
tests (tests/backends/verl/test_qwen_vl.py, test_gemma3.py, the verl loop tests), the trl backend's
tests (tests/backends/trl/conftest.py) and the GPU check (tests/device_check.py).

The tokenizers are byte-level BPE without merges: every text round-trips exactly, and the model's
special tokens (chat turns, image placeholders) are single added tokens.
"""

from __future__ import annotations

# The Qwen pieces live in the package, which builds the tiny model of config/verl_cpu.yaml from them.
from eqpo.data.demo.tiny_vl import (  # noqa: F401
    IMAGE_PAD,
    MERGE,
    QWEN_ARCHITECTURES,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIALS,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    byte_level_tokenizer,
    qwen_text_config,
    qwen_token_ids,
    qwen_tokenizer,
    tiny_qwen_config,
)

# ----------------------------------------------------------------------------------------------
# Gemma3 (MedGemma): tests/backends/verl/test_gemma3.py, the verl loop tests and tests/device_check.py
# ----------------------------------------------------------------------------------------------

GEMMA3_BOI, GEMMA3_EOI, GEMMA3_IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
GEMMA3_SPECIALS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    GEMMA3_BOI,
    GEMMA3_EOI,
    GEMMA3_IMAGE,
]
GEMMA3_TOKENS_PER_IMAGE = 4
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA3_NEWLINES = ["\n" * n for n in (1, 2, 3, 4)]


def gemma3_tokenizer():
    """Byte-level, plus Gemma's single tokens for runs of 1-4 newlines (the image block's "\\n\\n"
    merges with a neighbouring newline, as in MedGemma's tokenizer and vLLM's gemma3_mm)."""
    from tokenizers import AddedToken

    tokenizer = byte_level_tokenizer(
        GEMMA3_SPECIALS,
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={"boi_token": GEMMA3_BOI, "eoi_token": GEMMA3_EOI, "image_token": GEMMA3_IMAGE},
    )
    tokenizer.add_tokens([AddedToken(n, special=False, normalized=False) for n in GEMMA3_NEWLINES])
    return tokenizer


def tiny_gemma3_config(tokenizer):
    """A tiny Gemma3ForConditionalGeneration config: 2 text layers of width 32 (one sliding, one
    full attention), one SigLIP layer, 32x32 images -> 4 tokens per image."""
    from transformers import Gemma3Config
    from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig
    from transformers.models.siglip.configuration_siglip import SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=16,
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=GEMMA3_TOKENS_PER_IMAGE,
        boi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_BOI),
        eoi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_EOI),
        image_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_IMAGE),
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    return config
