"""Standard tables -> verl RLHFDataset parquet files (train / val / test, GRPO+RS, no demographics).

Each row: ``data_source`` (dataset), ``prompt`` (one user message: one ``<image>`` per image, the
paper's question for the dataset, the reasoning-format instruction once), ``images`` (absolute
paths), ``ability``, ``reward_model = {"style": "rule", "ground_truth": "A, B"}`` and ``extra_info``
(split, index, dataset, sample_id, age, sex, group) that the verl extension hands to the estimator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..groups import balance_by_group
from ..vocabularies import get_spec

FORMAT_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)

# The paper's questions (CLIMB to_qa templates), without the image placeholders.
QUESTIONS = {
    "CheXpert": "Above is a chest X-ray image of a patient. What is the diagnosis of the patient in the X-ray image? "
                "Answer with one or multiple phrases from the following:",
    "HAM10000": "Above is a dermoscopy image of a patient. What is the diagnosis of the patient in the dermoscopy "
                "image? Answer with one word from the following:",
    "PAD-UFES-20": "Above is a clinical image of a patient. What is the diagnosis of the patient in the clinical "
                   "image? Answer with one word from the following:",
    "ISIC-2020": "Above is a dermoscopy image of a patient. Is the skin lesion benign or malignant? "
                 "Answer with one word from the following:",
    "VinDr-Mammo": "Above is a mammography X-ray image of a patient. What is the BIRAD classification of the patient "
                   "in the mammography image? Answer with one phrase from the following:",
    "Hemorrhage": "Above is a brain CT scan slice. Is there any hemorrhage present in this CT scan slice? "
                  "Answer with one of the following:",
    "COVID-BLUES": "Above is a lung ultrasound video. Based on the ultrasound, does the patient have COVID? "
                   "Answer with one of the following:",
}


def question(dataset: str, custom_question: str | None = None) -> str:
    """The question text followed by the dataset's label options, one per line."""
    spec = get_spec(dataset)
    text = custom_question or QUESTIONS.get(dataset)
    if text is None:
        raise ValueError(f"no question for dataset {dataset!r}: give one in its data.custom entry (question:)")
    return text + "\n" + "\n".join(spec.labels)


def prompt_text(dataset: str, n_images: int, custom_question: str | None = None) -> str:
    return "<image>" * n_images + "\n" + question(dataset, custom_question) + "\n" + FORMAT_INSTRUCTION


def to_verl(table: pd.DataFrame, root: str | Path, mask_demographics: bool = False,
            questions: dict[str, str] | None = None) -> pd.DataFrame:
    """Standard table -> RLHFDataset rows. ``mask_demographics`` drops age, sex and group (the
    no-demographics variant); image paths become absolute under ``root``."""
    root = Path(root).resolve()
    questions = questions or {}
    rows = []
    for index, row in enumerate(table.itertuples(index=False)):
        images = [str(root / p) for p in row.images]
        age = None if mask_demographics or pd.isna(row.age) else float(row.age)
        rows.append({
            "data_source": row.dataset,
            "prompt": [{"role": "user", "content": prompt_text(row.dataset, len(images), questions.get(row.dataset))}],
            "images": images,
            "ability": "medical_diagnosis",
            "reward_model": {"style": "rule", "ground_truth": ", ".join(row.labels)},
            "extra_info": {
                "split": row.split, "index": index, "dataset": row.dataset, "sample_id": row.sample_id,
                "age": age, "sex": None if mask_demographics else row.sex,
                "group": None if mask_demographics else row.group,
            },
        })
    return pd.DataFrame(rows)


def export_verl(cohort: pd.DataFrame, root: str | Path, out_dir: str | Path, seed: int = 0,
                questions: dict[str, str] | None = None) -> dict[str, Path]:
    """Write train/val/test.parquet, train_rs.parquet (GRPO+RS oversampling) and
    train_nodemo.parquet (demographics masked) into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in ("train", "val", "test"):
        part = cohort[cohort["split"] == split]
        paths[split] = out_dir / f"{split}.parquet"
        to_verl(part, root, questions=questions).to_parquet(paths[split], index=False)
    train = cohort[cohort["split"] == "train"]
    paths["train_rs"] = out_dir / "train_rs.parquet"
    rs = balance_by_group(train, seed=seed)
    to_verl(rs.iloc[np.random.default_rng(seed).permutation(len(rs))], root, questions=questions).to_parquet(
        paths["train_rs"], index=False)
    paths["train_nodemo"] = out_dir / "train_nodemo.parquet"
    to_verl(train, root, mask_demographics=True, questions=questions).to_parquet(paths["train_nodemo"], index=False)
    return paths
