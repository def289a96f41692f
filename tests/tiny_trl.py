"""The tiny vision-language setting of the trl backend's tests (tests/trl/) and the GPU check
(tests/device_check.py), without pytest: a tiny randomly initialised Qwen2.5-VL and its processor,
built locally (no downloads), warm-started to answer in the prompt's format, a fixture dataset of tiny
PNGs, and one training run through eqpo.trl.

The model (2 text layers of width 32, one vision block, 56x56 images -> 4 image tokens) and the
processor (a byte-level tokenizer with the Qwen special tokens, the PIL Qwen2-VL image processor, a
Qwen-style chat template) come from tests/tiny_models.py, as in tests/verl/test_qwen_vl.py. A random model never writes
``\\boxed{...}``, so :func:`build_model` teaches it a few supervised steps of
``\\boxed{<label>}`` answers with labels drawn at random (the warm start stands in
for a pretrained model's format-following): sampled rollouts then parse, and differ in reward.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tiny_models import QWEN_CHAT_TEMPLATE, qwen_tokenizer, tiny_qwen_config

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


def build_model(path: Path, warm_steps: int = 40, seed: int = 0) -> Path:
    """Save the tiny model + processor into ``path`` after ``warm_steps`` supervised steps on
    format-following answers with random labels (prompts of the fixture's form, random images)."""
    import transformers
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from eqpo.data.export import FORMAT_INSTRUCTION

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

        processor = load_processor(path)
        rng = np.random.default_rng(seed)
        text = "\n" + QUESTION + "\n" + "\n".join(LABELS) + "\n" + FORMAT_INSTRUCTION
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(warm_steps):
            batch_images, texts, answers = [], [], []
            for _ in range(4):
                image = Image.new("RGB", (40, 40), tuple(int(c) for c in rng.integers(0, 256, size=3)))
                messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
                prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                answer = f"\\boxed{{{LABELS[int(rng.integers(0, 2))]}}}<|im_end|>"
                batch_images.append(image)
                texts.append(prompt + answer)
                answers.append(answer)
            enc = processor(text=texts, images=batch_images, return_tensors="pt", padding=True, padding_side="right")
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
    model.save_pretrained(path)
    return path


#: The runs of the tests: 4 steps of 2 prompts x 4 rollouts, a checkpoint every 2 steps, the label-set
#: F1 reward with strict matching (1 for the right label in the last box, else 0).
TRAIN = {"steps": 4, "batch_prompts": 2, "rollouts": 4, "lr": 1e-3, "test_freq": 2, "save_freq": 2,
         "max_response_length": 16, "rollout_data": True}
TRL = {"eval_batch_size": 6}
REPRODUCTION = {"reward": {"function": "f1", "matching": "strict"}, "metrics": {"extraction": "last_box"}}


@contextlib.contextmanager
def one_torch_thread():
    """One torch thread: on a shared 2-core machine more threads slow these tiny models down 20x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def export_fixture(root: Path) -> dict:
    """The fixture dataset as a data.custom entry under ``root``, its cohort and its verl export
    (train/val/test parquet files)."""
    from eqpo.pipeline import build_cohort, run_export_verl

    entry = custom_dataset(root / "raw")
    build_cohort([], root / "cohort.parquet", root / "table1", [entry])
    run_export_verl(root / "cohort.parquet", root, root / "verl", 0, [entry])
    return {"entry": entry, "root": root, "verl": root / "verl"}


def train_run(model: Path, data: dict, method: str, run_dir: Path, estimator_options=None, stop_after=None,
              train=None, trl=None):
    """One eqpo.trl run of ``method`` on the fixture export; ``train`` / ``trl`` change TRAIN / TRL."""
    from eqpo.run_settings import ReproductionOptions
    from eqpo.trl.trainer import run_training

    return run_training(data["verl"] / "train.parquet", data["verl"] / "val.parquet", model, method,
                        estimator_options or {}, {**TRAIN, **(train or {})}, {**TRL, **(trl or {})}, 0, run_dir,
                        options=ReproductionOptions.from_config(REPRODUCTION), stop_after=stop_after,
                        log=lambda message: None)
