"""A tiny vision-language fixture shared by the trl backend's tests (tests/trl/conftest.py) and the
verl loop tests (tests/verl/test_verl_loop.py): a dataset of tiny PNGs described as a ``data.custom``
entry, and tiny randomly initialised Qwen2.5-VL and Gemma3 (MedGemma's architecture) checkpoints with
their processors, built locally (no downloads; configs from tests/tiny_models.py).

A random model never writes ``\\boxed{...}``, so each builder teaches it a few supervised steps of
``\\boxed{<label>}`` answers with labels drawn at random (the warm start stands in for a pretrained
model's format-following): sampled rollouts then parse, and differ in reward.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tiny_models import (GEMMA3_CHAT_TEMPLATE, GEMMA3_TOKENS_PER_IMAGE, QWEN_CHAT_TEMPLATE, gemma3_tokenizer,
                         qwen_tokenizer, tiny_gemma3_config, tiny_qwen_config)

LABELS = ["Nevus", "Melanoma"]
DATASET = "TinyDerm"
QUESTION = "Nevus or melanoma? Answer with one word from the following:"


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n tiny PNGs (40x40, one random colour each); returns their file names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"img{i:03d}.png"
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        Image.new("RGB", (40, 40), colour).save(folder / name)
        names.append(name)
    return names


def custom_dataset(folder: Path, n: int = 24, seed: int = 0) -> dict:
    """A data.custom entry (CSV + PNGs) of ``n`` samples: half train, a quarter val, a quarter test;
    two sexes x ages 30/70 -> explicit groups, every third sample without demographics (EQPO's
implicit groups)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = write_images(folder / "images", n, seed)
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame({
        "sample_id": [f"td{i:03d}" for i in range(n)], "patient_id": [f"p{i:03d}" for i in range(n)],
        "split": ["train" if i % 4 < 2 else "val" if i % 4 == 2 else "test" for i in range(n)],
        "label": [LABELS[int(b)] for b in rng.integers(0, 2, size=n)],
        "age": [None if i % 3 == 0 else 30.0 if i % 2 else 70.0 for i in range(n)],
        "sex": [None if i % 3 == 0 else "female" if (i // 2) % 2 else "male" for i in range(n)],
        "image": [f"images/{name}" for name in images],
    })
    rows.to_csv(folder / "samples.csv", index=False)
    return {"name": DATASET, "path": str(folder / "samples.csv"), "labels": LABELS, "multi_label": False,
            "attributes": ["sex", "age"], "question": QUESTION}


def warm_start(model, processor, tokenizer, end_of_turn: str, steps: int, seed: int = 0, side: int = 40) -> None:
    """``steps`` AdamW steps (lr 1e-2) of 4 prompts of the fixture's form (one random-colour image of
    ``side`` pixels) answered ``\\boxed{<random label>}<end_of_turn>``; loss on the answer tokens only."""
    from PIL import Image

    from eqpo.data.export import FORMAT_INSTRUCTION

    rng = np.random.default_rng(seed)
    text = "\n" + QUESTION + "\n" + "\n".join(LABELS) + "\n" + FORMAT_INSTRUCTION
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        batch_images, texts, answers = [], [], []
        for _ in range(4):
            image = Image.new("RGB", (side, side), tuple(int(c) for c in rng.integers(0, 256, size=3)))
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            answer = f"\\boxed{{{LABELS[int(rng.integers(0, 2))]}}}{end_of_turn}"
            batch_images.append(image)
            texts.append(prompt + answer)
            answers.append(answer)
        enc = processor(text=texts, images=[[image] for image in batch_images], return_tensors="pt", padding=True,
                        padding_side="right")
        labels = enc["input_ids"].clone()
        for row, answer in enumerate(answers):
            n_answer = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
            length = int(enc["attention_mask"][row].sum())
            labels[row, : length - n_answer] = -100
            labels[row, length:] = -100
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def build_qwen_vl(path: Path, warm_steps: int = 40, seed: int = 0) -> Path:
    """Save a tiny Qwen2.5-VL + processor into ``path`` after ``warm_steps`` warm-start steps
    (2 text layers of width 32, one vision block; every image becomes 4 merged image tokens)."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen_tokenizer()
    side = 14 * 2 * 2  # every image becomes a 4x4 patch grid -> 4 merged image tokens
    images = Qwen2VLImageProcessorPil(size={"shortest_edge": side * side, "longest_edge": side * side},
                                      patch_size=14, merge_size=2, temporal_patch_size=2)
    tokenizer.save_pretrained(path)
    images.save_pretrained(path)
    (path / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.Qwen2_5_VLForConditionalGeneration(tiny_qwen_config("qwen2_5_vl", tokenizer, 2048))
    if warm_steps:
        from eqpo.trl.data import load_processor

        warm_start(model, load_processor(path), tokenizer, "<|im_end|>", warm_steps, seed)
    model.save_pretrained(path)
    return path


def build_gemma3(path: Path, warm_steps: int = 40, seed: int = 0) -> Path:
    """Save a tiny Gemma3 (MedGemma's architecture) + Gemma3Processor into ``path`` after
    ``warm_steps`` warm-start steps; generation stops at ``<end_of_turn>``, as MedGemma's does."""
    from transformers import Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = gemma3_tokenizer()
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE,
                                image_seq_length=GEMMA3_TOKENS_PER_IMAGE)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Gemma3ForConditionalGeneration(tiny_gemma3_config(tokenizer))
        if warm_steps:
            warm_start(model, processor, tokenizer, "<end_of_turn>", warm_steps, seed)
        model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                                tokenizer.convert_tokens_to_ids("<end_of_turn>")]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return path
