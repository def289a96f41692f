"""A tiny vision-language model and image dataset, built on this machine, for checking the verl path
(``config/verl_cpu.yaml``) on a laptop before spending cluster hours; the tests use the same pieces.

- :func:`custom_dataset`: ``n`` tiny PNGs (one random colour each) with a ``data.custom`` CSV: two
  labels, sex x age groups, every third sample without demographics (EQPO's implicit groups).
- :func:`build_qwen_vl`: a randomly initialised Qwen2.5-VL (2 text layers of width 32, one vision
  block; every image becomes 4 image tokens) with its processor (a byte-level tokenizer with the Qwen
  chat and vision tokens, transformers' PIL Qwen2-VL image processor, a Qwen-style chat template),
  warm-started by :func:`warm_start`: a random model never writes ``\\boxed{...}``, so a few
  supervised steps of ``\\boxed{<random label>}`` answers stand in for a pretrained model's
  format-following. Sampled rollouts then parse and differ in reward; the labels are random, so the
  model learns nothing about the images, and its numbers mean nothing.

Nothing is downloaded. The byte-level tokenizers have no merges: every text round-trips exactly, and
the special tokens are single added tokens.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

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
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok)
        for name, tok in (
            ("image_token_id", IMAGE_PAD),
            ("video_token_id", VIDEO_PAD),
            ("vision_start_token_id", VISION_START),
            ("vision_end_token_id", VISION_END),
        )
    }
    assert len(set(ids.values())) == 4
    return ids


def qwen_text_config(tokenizer, mrope_section, max_position_embeddings: int = 1024, **extra) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section, **extra},
    )


QWEN_ARCHITECTURES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration"}


def tiny_qwen_config(family: str, tokenizer, max_position_embeddings: int = 1024):
    """A tiny config of ``family`` (qwen2_5_vl or qwen3_vl): 2 text layers of width 32, head_dim 16
    -> 8 rotary frequencies split over (t, h, w); one (Qwen2.5-VL) or two (Qwen3-VL) vision blocks."""
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config

        vision = dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
            out_hidden_size=32,
            window_size=56,
            fullatt_block_indexes=[0],
        )
        text = qwen_text_config(tokenizer, [2, 3, 3], max_position_embeddings)
    else:
        from transformers import Qwen3VLConfig as Config

        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
            out_hidden_size=32,
            num_position_embeddings=16,
            deepstack_visual_indexes=[0],
        )
        text = qwen_text_config(tokenizer, [4, 2, 2], max_position_embeddings, mrope_interleaved=True)
    config = Config(text_config=text, vision_config=vision, **qwen_token_ids(tokenizer))
    config.architectures = [QWEN_ARCHITECTURES[family]]
    return config


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


def custom_dataset(folder: Path, n: int = 24, seed: int = 0, name: str = DATASET) -> dict:
    """A data.custom entry ``name`` (CSV + PNGs in ``folder``) of ``n`` samples: half train, a quarter
    val, a quarter test; two sexes x ages 30/70 -> explicit groups, every third sample without
    demographics (EQPO's implicit groups)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = write_images(folder / "images", n, seed)
    rng = np.random.default_rng(seed)
    prefix = "" if name == DATASET else f"{name}-"  # ids unique across several such datasets
    rows = pd.DataFrame(
        {
            "sample_id": [f"{prefix}td{i:03d}" for i in range(n)],
            "patient_id": [f"{prefix}p{i:03d}" for i in range(n)],
            "split": ["train" if i % 4 < 2 else "val" if i % 4 == 2 else "test" for i in range(n)],
            "label": [LABELS[int(b)] for b in rng.integers(0, 2, size=n)],
            "age": [None if i % 3 == 0 else 30.0 if i % 2 else 70.0 for i in range(n)],
            "sex": [None if i % 3 == 0 else "female" if (i // 2) % 2 else "male" for i in range(n)],
            "image": [f"images/{name}" for name in images],
        }
    )
    rows.to_csv(folder / "samples.csv", index=False)
    return {
        "name": name,
        "path": str(folder / "samples.csv"),
        "labels": LABELS,
        "multi_label": False,
        "attributes": ["sex", "age"],
        "question": QUESTION,
    }


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
        enc = processor(
            text=texts,
            images=[[image] for image in batch_images],
            return_tensors="pt",
            padding=True,
            padding_side="right",
        )
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
    images = Qwen2VLImageProcessorPil(
        size={"shortest_edge": side * side, "longest_edge": side * side},
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )
    tokenizer.save_pretrained(path)
    images.save_pretrained(path)
    (path / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.Qwen2_5_VLForConditionalGeneration(tiny_qwen_config("qwen2_5_vl", tokenizer, 2048))
    if warm_steps:
        from eqpo.runs.hf_models import load_processor

        warm_start(model, load_processor(path), tokenizer, "<|im_end|>", warm_steps, seed)
    model.save_pretrained(path)
    return path


def check_custom_entry(entries: list[dict], written: dict) -> None:
    """Raise unless ``entries`` (the config's ``data.custom``) describe the dataset just written
    (``written``, from :func:`custom_dataset`) exactly, path included: the cohort reads the config's
    entry, so an edited label or question would no longer match the files."""
    path = Path(written["path"]).resolve()
    mine = [e for e in entries if Path(e["path"]).resolve() == path]
    if not mine:
        raise ValueError(f"no data.custom entry has path {written['path']}; add {written}")
    if mine[0] != {**written, "path": mine[0]["path"]}:
        raise ValueError(
            f"the data.custom entry {mine[0]} does not describe the tiny dataset; it should read "
            f"{ {**written, 'path': mine[0]['path']} }"
        )
