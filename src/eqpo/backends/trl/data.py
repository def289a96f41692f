"""Our verl export -> what TRL's GRPOTrainer reads, the model and processor, and greedy answers.

The trl backend reads the same parquet files as the verl backend (:func:`eqpo.data.export.to_verl`:
``prompt``, ``images``, ``data_source``, ``reward_model.ground_truth``, ``extra_info`` with
``dataset``, ``group``, ``sample_id``, ``age``, ``sex``), so both backends see the same prompts.

- :func:`chat` turns one row's user message into TRL's structured content: the message is split at
  its ``<image>`` placeholders exactly as verl's ``RLHFDataset`` splits it, each placeholder becoming
  ``{"type": "image"}`` (TRL fills them with the row's images in order) and the text segments kept.
- :func:`to_trl_dataset`: a ``datasets.Dataset`` with ``prompt``, ``images`` (decoded to PIL when a
  row is read), ``ground_truth``, ``dataset``, ``group``, ``true_group`` and ``sample_id``.
- :func:`load_processor` / :func:`load_model` (from :mod:`eqpo.runs.hf_models`): a local model directory.
- :func:`generate_answers`: greedy answers with plain ``generate`` (or vLLM, :func:`vllm_answers`),
  and :func:`eqpo.data.export.predictions_from_outputs` (shared with the verl backend): answers ->
  the predictions table of the run-file contract.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eqpo.core.advantages import normalize_group
from eqpo.data.export import image_paths, read_export
from eqpo.runs.hf_models import image_only_video_processor, load_model, load_processor, tokenizer_of  # noqa: F401

_PLACEHOLDER = re.compile(r"(<image>)")


# ----------------------------------------------------------------------------------------------
# Export rows
# ----------------------------------------------------------------------------------------------


def chat(messages: Sequence[dict], n_images: int, where: str = "row") -> list[dict]:
    """The row's messages in TRL's structured form: each ``<image>`` placeholder of the text becomes
    an image part (in order), the text between them text parts. A row without images keeps plain
    string contents (TRL then renders a text-only prompt)."""
    if n_images == 0:
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    found = sum(str(m["content"]).count("<image>") for m in messages)
    if found != n_images:
        raise ValueError(f"{where}: the prompt has {found} <image> placeholders for {n_images} images")
    out = []
    for message in messages:
        parts = []
        for segment in (s for s in _PLACEHOLDER.split(str(message["content"])) if s != ""):
            parts.append({"type": "image", "text": None} if segment == "<image>" else {"type": "text", "text": segment})
        out.append({"role": str(message["role"]), "content": parts})
    return out


def _truth(ground_truth: Any) -> str:
    if isinstance(ground_truth, str):
        return ground_truth
    values = ground_truth.tolist() if hasattr(ground_truth, "tolist") else list(ground_truth)
    return ", ".join(str(v) for v in values)


def records(rows: pd.DataFrame, check_files: bool = True) -> list[dict]:
    """One plain record per export row: prompt (structured chat), image paths, ground truth and the
    identity columns the estimators read (dataset, explicit group, sample id; true_group for the
    cluster log: ``extra_info.true_group`` when the export has it, else the group)."""
    out = []
    for i, row in enumerate(rows.itertuples(index=False)):
        info = row.extra_info if isinstance(row.extra_info, dict) else {}
        sample_id = info.get("sample_id")
        where = f"row {i} ({sample_id})"
        images = image_paths(row.images, where, check_files)
        group = normalize_group(info.get("group"))
        out.append(
            {
                "prompt": chat([dict(m) for m in row.prompt], len(images), where),
                "images": images,
                "ground_truth": _truth(row.reward_model["ground_truth"]),
                "dataset": str(info.get("dataset") or row.data_source),
                "group": group,
                "true_group": normalize_group(info.get("true_group", info.get("group"))),
                "sample_id": str(sample_id if sample_id is not None else info.get("index", i)),
            }
        )
    return out


def to_trl_dataset(source: str | Path | pd.DataFrame, check_files: bool = True):
    """A ``datasets.Dataset`` for GRPOTrainer: ``prompt`` (conversational, structured), ``images``
    (decoded to PIL images on access), ``ground_truth``, ``dataset``, ``group``, ``true_group``,
    ``sample_id``. Every column but prompt and images reaches the reward function and the estimator."""
    import datasets

    recs = records(read_export(source), check_files)
    if any(r["images"] for r in recs):  # one column type: rows without images get structured text too
        for r in recs:
            r["prompt"] = [
                m
                if isinstance(m["content"], list)
                else {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                for m in r["prompt"]
            ]
    table = datasets.Dataset.from_list(recs)
    if any(r["images"] for r in recs):
        table = table.cast_column("images", datasets.List(datasets.Image()))
    else:
        table = table.remove_columns("images")
    return table


# ----------------------------------------------------------------------------------------------
# Greedy answers
# ----------------------------------------------------------------------------------------------


def _filled(prompt: list[dict], images: list) -> list[dict]:
    """Structured messages with the images placed into their placeholders (as TRL does)."""
    it = iter(images)
    out = []
    for message in prompt:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "image", "image": next(it)} if p["type"] == "image" else {"type": "text", "text": p["text"]}
                for p in content
            ]
        out.append({"role": message["role"], "content": content})
    return out


def _open(path: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def generate_answers(
    model: Any, processor: Any, recs: Sequence[dict], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy answers (temperature 0, one sample) with plain ``model.generate``, in record order.
    Prompts are rendered by the processor's chat template with the rows' images, as in training."""
    import torch

    tokenizer = tokenizer_of(processor)
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    device = next(model.parameters()).device
    try:
        for start in range(0, len(recs), batch_size):
            chunk = recs[start : start + batch_size]
            images = [[_open(p) for p in r["images"]] for r in chunk]
            texts = [
                processor.apply_chat_template(_filled(r["prompt"], imgs), tokenize=False, add_generation_prompt=True)
                for r, imgs in zip(chunk, images, strict=False)
            ]
            kwargs = {"text": texts, "return_tensors": "pt", "padding": True, "padding_side": "left"}
            if any(images):
                kwargs["images"] = [img for imgs in images for img in imgs]
            if processor is tokenizer:
                kwargs.pop("text")
                inputs = tokenizer(texts, **kwargs)
            else:
                inputs = processor(**kwargs)
            inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
            with torch.no_grad():
                generated = model.generate(
                    **inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
                )
            new = generated[:, inputs["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return outputs


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def vllm_answers(
    model_dir: str | Path, recs: Sequence[dict], max_new_tokens: int, seed: int = 0, gpu_memory_utilization: float = 0.8
) -> list[str]:
    """Greedy answers with vLLM's offline ``LLM.chat`` on a saved model directory (same prompts)."""
    import vllm

    requests, limit = [], 0
    for r in recs:
        it = iter(r["images"])
        chat_ = []
        for message in r["prompt"]:
            content = message["content"]
            if isinstance(content, list):
                content = [
                    {"type": "image_url", "image_url": {"url": Path(next(it)).as_uri()}}
                    if p["type"] == "image"
                    else {"type": "text", "text": p["text"]}
                    for p in content
                ]
            chat_.append({"role": message["role"], "content": content})
        requests.append(chat_)
        limit = max(limit, len(r["images"]))
    images = [p for r in recs for p in r["images"]]
    kwargs = {
        "model": str(model_dir),
        "seed": seed,
        "gpu_memory_utilization": gpu_memory_utilization,
        "limit_mm_per_prompt": {"image": limit},
    }
    if images:
        kwargs["allowed_local_media_path"] = os.path.commonpath([os.path.dirname(p) for p in images])
    llm = vllm.LLM(**kwargs)
    outs = llm.chat(
        requests,
        vllm.SamplingParams(n=1, temperature=0.0, max_tokens=max_new_tokens),
        chat_template_content_format="openai",
    )
    return [o.outputs[0].text for o in outs]
