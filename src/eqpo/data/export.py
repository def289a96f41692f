"""Standard tables -> verl RLHFDataset parquet files (train / val / test, GRPO+RS, no demographics),
and back: reading an export and turning one answer per row into the predictions table that every
GPU backend (verl + vLLM, TRL) writes.

Each row: ``data_source`` (dataset), ``prompt`` (one user message: one ``<image>`` per image, the
paper's question for the dataset, the reasoning-format instruction once), ``images`` (absolute
paths), ``ability``, ``reward_model = {"style": "rule", "ground_truth": "A, B"}`` and ``extra_info``
(split, index, dataset, sample_id, age, sex, group) that the verl extension hands to the estimator.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eqpo.core.groups import resample_for_rs
from eqpo.core.methods import RESAMPLED
from eqpo.core.rewards import LabelParser, as_label_list, score_response
from eqpo.core.vocabularies import get_spec

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
    "COVID-BLUES": "Above is a lung ultrasound video. Based on the ultrasound, does the patient have COVID?",
}
# Datasets whose CLIMB question names no answer options (CLIMB covid_blue.py: "... does the patient
# have COVID?"). The authors' runs never produced a valid COVID-BLUES label (F1 0 and accuracy 0.5 in
# every age group of their validation logs), so the reproduction default keeps the question as is;
# config ``data.covid_blues_options: true`` lists the options, as for every other dataset.
UNLISTED_OPTIONS = ("COVID-BLUES",)
OPTIONS_LEAD = "Answer with one of the following:"


def question(dataset: str, custom_question: str | None = None, list_options: bool = True) -> str:
    """The question text followed by the dataset's label options, one per line. For a dataset of
    :data:`UNLISTED_OPTIONS`, CLIMB's question alone unless ``list_options`` (then
    :data:`OPTIONS_LEAD` and the options)."""
    spec = get_spec(dataset)
    text = custom_question or QUESTIONS.get(dataset)
    if text is None:
        raise ValueError(f"no question for dataset {dataset!r}: give one in its data.custom entry (question:)")
    if dataset in UNLISTED_OPTIONS and not custom_question:
        if not list_options:
            return text
        text = text + " " + OPTIONS_LEAD
    return text + "\n" + "\n".join(spec.labels)


def prompt_text(dataset: str, n_images: int, custom_question: str | None = None, list_options: bool = True) -> str:
    return "<image>" * n_images + "\n" + question(dataset, custom_question, list_options) + "\n" + FORMAT_INSTRUCTION


def to_verl(
    table: pd.DataFrame,
    root: str | Path,
    mask_demographics: bool = False,
    questions: dict[str, str] | None = None,
    list_options: bool = True,
) -> pd.DataFrame:
    """Standard table -> RLHFDataset rows. ``mask_demographics`` drops age, sex and group (the
    no-demographics variant); image paths become absolute under ``root``; ``list_options``: see
    :func:`question`."""
    root = Path(root).resolve()
    questions = questions or {}
    rows = []
    for index, row in enumerate(table.itertuples(index=False)):
        images = [str(root / p) for p in row.images]
        age = None if mask_demographics or pd.isna(row.age) else float(row.age)
        rows.append(
            {
                "data_source": row.dataset,
                "prompt": [
                    {
                        "role": "user",
                        "content": prompt_text(row.dataset, len(images), questions.get(row.dataset), list_options),
                    }
                ],
                "images": images,
                "ability": "medical_diagnosis",
                "reward_model": {"style": "rule", "ground_truth": ", ".join(row.labels)},
                "extra_info": {
                    "split": row.split,
                    "index": index,
                    "dataset": row.dataset,
                    "sample_id": row.sample_id,
                    "age": age,
                    "sex": None if mask_demographics else row.sex,
                    "group": None if mask_demographics else row.group,
                },
            }
        )
    return pd.DataFrame(rows)


# Methods that train on the group-resampled export (GRPO+RS); every other one on train.parquet.
RESAMPLED_METHODS = RESAMPLED


def train_part(method: str) -> str:
    """The export a method trains on: ``train_rs`` (GRPO+RS) or ``train``."""
    return "train_rs" if method in RESAMPLED_METHODS else "train"


RECORDS = ("with_demographics", "all")


def with_demographics(cohort: pd.DataFrame, specs: dict | None = None) -> pd.DataFrame:
    """The rows that record at least one demographic attribute of their dataset (a known age, or a
    known sex where the dataset records sex): what the authors' ``*_demo_only`` files held (their
    demographics builder writes a ``demo`` field only when it has a value)."""
    from eqpo.core.groups import age_bin, normalize_sex

    keep = []
    for dataset, age, sex in zip(cohort["dataset"], cohort["age"], cohort["sex"], strict=False):
        attributes = ((specs or {}).get(dataset) or get_spec(str(dataset))).attributes
        keep.append(
            ("age" in attributes and age_bin(age, "authors_code") is not None)
            or ("sex" in attributes and normalize_sex(sex) is not None)
        )
    return cohort[np.asarray(keep, dtype=bool)] if len(cohort) else cohort


def select_records(cohort: pd.DataFrame, records: str, specs: dict | None = None) -> pd.DataFrame:
    """config ``data.records``: ``with_demographics`` (:func:`with_demographics`, the authors'
    training and validation files) or ``all``."""
    if records not in RECORDS:
        raise ValueError(f"data.records must be one of {list(RECORDS)}, got {records!r}")
    return with_demographics(cohort, specs) if records == "with_demographics" else cohort


def export_verl(
    cohort: pd.DataFrame,
    root: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    questions: dict[str, str] | None = None,
    group_definition: str = "paper",
    records: str = "all",
    list_options: bool = True,
) -> dict[str, Path]:
    """Write train/val/test.parquet, train_rs.parquet (GRPO+RS oversampling of
    :func:`eqpo.core.groups.resampling_cells` by ``group_definition``) and train_nodemo.parquet
    (demographics masked) into out_dir, from the rows ``records`` selects (:func:`select_records`,
    every split alike); returns their paths. ``list_options``: see :func:`question`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cohort = select_records(cohort, records)
    write = dict(root=root, questions=questions, list_options=list_options)
    paths = {}
    for split in ("train", "val", "test"):
        part = cohort[cohort["split"] == split]
        paths[split] = out_dir / f"{split}.parquet"
        to_verl(part, **write).to_parquet(paths[split], index=False)
    train = cohort[cohort["split"] == "train"]
    paths["train_rs"] = out_dir / "train_rs.parquet"
    rs = resample_for_rs(train, seed, group_definition)
    to_verl(rs.iloc[np.random.default_rng(seed).permutation(len(rs))], **write).to_parquet(
        paths["train_rs"], index=False
    )
    paths["train_nodemo"] = out_dir / "train_nodemo.parquet"
    to_verl(train, mask_demographics=True, **write).to_parquet(paths["train_nodemo"], index=False)
    return paths


# ----------------------------------------------------------------------------------------------
# Reading an export, and the predictions table of its answers
# ----------------------------------------------------------------------------------------------

EXPORT_COLUMNS = ("prompt", "images", "data_source", "reward_model", "extra_info")
PREDICTION_COLUMNS = (
    "sample_id",
    "dataset",
    "labels",
    "prediction",
    "age",
    "sex",
    "response",
    "reward",
    "items",
    "unparsed_items",
)


def read_export(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Rows of a verl export (a parquet path or its DataFrame), checked for the needed columns."""
    rows = source if isinstance(source, pd.DataFrame) else pd.read_parquet(source)
    missing = [c for c in EXPORT_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"not a verl export (eqpo.data.export.to_verl): missing columns {missing}")
    if rows.empty:
        raise ValueError("the verl export has no rows")
    return rows.reset_index(drop=True)


def subsample(rows: pd.DataFrame, max_samples: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``max_samples`` rows (``evaluation.max_samples``), drawn at random with ``seed`` and kept
    in export order; all rows when ``max_samples`` is None or not smaller than the table."""
    if max_samples is None or max_samples >= len(rows):
        return rows
    if max_samples < 1:
        raise ValueError(f"evaluation.max_samples must be >= 1, got {max_samples}")
    return rows.sample(n=max_samples, random_state=seed).sort_index().reset_index(drop=True)


def image_paths(images: Any, where: str, check_files: bool = True) -> list[str]:
    """A row's image paths, checked to be absolute (as the export writes them) and, with
    ``check_files``, to exist; ``where`` names the row in errors."""
    paths = [str(p) for p in (list(images) if images is not None else [])]
    for path in paths:
        if not os.path.isabs(path):
            raise ValueError(f"{where}: image path {path!r} is not absolute (the export writes absolute paths)")
        if check_files and not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: image {path} does not exist")
    return paths


def _age(value: Any) -> float:
    return float("nan") if value is None or pd.isna(value) else float(value)


def _sex(value: Any) -> str | None:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def predictions_from_outputs(rows: pd.DataFrame, outputs: Sequence[str | None], options: Any = None) -> pd.DataFrame:
    """Export rows + one answer each -> the predictions table (:data:`PREDICTION_COLUMNS`).

    ``options``: an :class:`eqpo.runs.settings.ReproductionOptions` (config ``metrics.extraction``,
    ``reward.function`` and ``reward.matching``); None: the last ``\\boxed{}``, lenient matching,
    label-set F1. ``prediction``: the labels of the extracted answer (empty when there is none or it
    names no label of the dataset); ``reward``: :func:`eqpo.core.rewards.score_response` with those
    options; ``items`` / ``unparsed_items``: the answer's items, and those naming no label.
    """
    function = "f1" if options is None else options.reward
    matching = "lenient" if options is None else options.matching
    extraction = "last_box" if options is None else options.extraction
    rows = read_export(rows)
    if len(outputs) != len(rows):
        raise ValueError(f"{len(outputs)} answers for {len(rows)} export rows")
    parsers: dict[str, LabelParser] = {}
    records = []
    for row, response in zip(rows.itertuples(index=False), outputs, strict=False):
        info = row.extra_info if isinstance(row.extra_info, dict) else {}
        dataset = str(info.get("dataset") or row.data_source)
        if dataset not in parsers:
            parsers[dataset] = LabelParser(get_spec(dataset).labels, matching)
        parser = parsers[dataset]
        truth = row.reward_model["ground_truth"]
        text = "" if response is None else str(response)
        result = score_response(text, truth, parser, function=function, extraction=extraction)
        sample_id = info.get("sample_id")
        records.append(
            {
                "sample_id": None if sample_id is None else str(sample_id),
                "dataset": dataset,
                "labels": as_label_list(truth, parser),
                "prediction": list(result.prediction),
                "age": _age(info.get("age")),
                "sex": _sex(info.get("sex")),
                "response": text,
                "reward": float(result.score),
                "items": result.n_items,
                "unparsed_items": len(result.unknown),
            }
        )
    table = pd.DataFrame.from_records(records, columns=list(PREDICTION_COLUMNS))
    table["age"] = table["age"].astype(np.float64)
    table["reward"] = table["reward"].astype(np.float64)
    return table
