"""The tiny vision-language fixture of the trl backend's tests (tests/backends/trl/conftest.py) and the verl
loop tests (tests/backends/verl/test_verl_loop.py): the dataset of tiny PNGs and the warm-started Qwen2.5-VL
come from the package (eqpo.data.demo.tiny_vl, which config/verl_cpu.yaml builds too); a warm-started tiny
Gemma3 (MedGemma's architecture) is added here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from eqpo.data.demo.tiny_vl import DATASET, LABELS, QUESTION, build_qwen_vl, custom_dataset, warm_start, write_images  # noqa: F401

from tiny_models import GEMMA3_CHAT_TEMPLATE, GEMMA3_TOKENS_PER_IMAGE, gemma3_tokenizer, tiny_gemma3_config


def build_gemma3(path: Path, warm_steps: int = 40, seed: int = 0) -> Path:
    """Save a tiny Gemma3 (MedGemma's architecture) + Gemma3Processor into ``path`` after
    ``warm_steps`` warm-start steps; generation stops at ``<end_of_turn>``, as MedGemma's does."""
    from transformers import Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = gemma3_tokenizer()
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=GEMMA3_TOKENS_PER_IMAGE,
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Gemma3ForConditionalGeneration(tiny_gemma3_config(tokenizer))
        if warm_steps:
            warm_start(model, processor, tokenizer, "<end_of_turn>", warm_steps, seed)
        model.generation_config.eos_token_id = [
            tokenizer.eos_token_id,
            tokenizer.convert_tokens_to_ids("<end_of_turn>"),
        ]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return path
