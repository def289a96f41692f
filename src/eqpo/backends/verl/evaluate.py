"""Test-split evaluation of a verl-trained model: checkpoint -> HF weights -> greedy vLLM answers
-> the predictions table of the run-file contract (:mod:`eqpo.runs.files`).

Steps (:func:`run_evaluation`):

1. :func:`merge_checkpoint`: the latest ``global_step_N/actor`` of the verl checkpoint directory
   (``latest_checkpointed_iteration.txt``) becomes a Hugging Face model directory. When
   ``actor/huggingface`` already holds full weights (``hf_model`` in
   ``actor.checkpoint.save_contents``) it is used as is; otherwise verl's model merger runs
   (``python -m verl.model_merger merge --backend fsdp --local_dir ... --target_dir ...``).
   Processor files (image processor, chat template) missing from the merged directory are copied
   from ``actor/huggingface``: verl's merger saves only the tokenizer for processors it does not
   know (Gemma3, see :mod:`eqpo.backends.verl.gemma3`), and vLLM needs them for images.
2. :func:`build_requests`: each row of our verl export (:func:`eqpo.data.export.to_verl`) becomes an
   OpenAI-format chat for vLLM's ``LLM.chat``: the user message is split at its ``<image>``
   placeholders exactly as verl's ``RLHFDataset._build_messages`` splits it for training (images
   in order, the text segments unchanged), with each image as
   ``{"type": "image_url", "image_url": {"url": "file:///abs/path"}}``. The model's own chat template
   renders it, as the processor's template does in training. File URLs need vLLM's
   ``allowed_local_media_path`` (:class:`VLLMGenerator` sets it to the images' common folder).
   Images: training loads them with ``qwen_vl_utils.fetch_image`` (rounded to the patch grid, at
   most 16384 x 28 x 28 pixels) before the HF processor; vLLM gives the raw file to the same HF
   processor, whose own resize targets the same grid for Qwen-VL and a fixed 896 x 896 for Gemma3,
   so only the resampling pass can differ.
3. A :class:`Generator` answers every chat, greedily (temperature 0, one sample):
   :class:`VLLMGenerator` on GPU, :class:`HFGenerator` (Hugging Face ``generate``) on a machine
   without GPU (``evaluation.engine: hf``), any object with ``generate(requests) -> list[str]`` in tests.
4. :func:`predictions_from_outputs`: answers are parsed with :func:`eqpo.core.rewards.score_response`
   against the dataset's vocabulary (the training reward's parser), giving ``prediction`` (empty
   when unparseable) and ``reward``.

vLLM is imported only when :class:`VLLMGenerator` first generates; this module needs neither verl
nor vLLM to be imported (the merger runs as a subprocess of ``python``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd

# The export reader and the predictions table are shared with the trl backend (eqpo.data.export).
from eqpo.data.export import PREDICTION_COLUMNS, image_paths, predictions_from_outputs, read_export, subsample

TRACKER = "latest_checkpointed_iteration.txt"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# Files a multimodal model directory needs beyond the tokenizer (image processor, chat template).
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "video_preprocessor_config.json",
)
MERGE_MARKER = ".eqpo_merged_from"
_PLACEHOLDER = re.compile(r"(<image>)")

Request = list  # one chat: a list of OpenAI-format messages


class CheckpointError(FileNotFoundError):
    """The verl checkpoint directory has no usable checkpoint."""


# ----------------------------------------------------------------------------------------------
# 1. Checkpoint -> Hugging Face model directory
# ----------------------------------------------------------------------------------------------


def latest_actor_dir(checkpoint_dir: str | Path) -> Path:
    """``<checkpoint_dir>/global_step_N/actor`` for the N in ``latest_checkpointed_iteration.txt``."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise CheckpointError(f"verl checkpoint directory {root} does not exist (did training run and save?)")
    tracker = root / TRACKER
    if not tracker.is_file():
        steps = sorted(p.name for p in root.glob("global_step_*"))
        hint = (
            f"; step folders present: {steps} (an async save may not have finished)"
            if steps
            else " and no global_step_* folders: training saved no checkpoint (trainer.save_freq?)"
        )
        raise CheckpointError(f"no {TRACKER} in {root}{hint}")
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{tracker} should hold a step number, found {text!r}")
    actor = root / f"global_step_{int(text)}" / "actor"
    if not actor.is_dir():
        raise CheckpointError(f"{tracker} points to step {int(text)} but {actor} does not exist")
    return actor


def has_hf_weights(directory: str | Path) -> bool:
    """True when ``directory`` has a config and full Hugging Face weights."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        return False
    return any(next(directory.glob(pattern), None) is not None for pattern in WEIGHT_PATTERNS)


def merge_command(actor_dir: str | Path, target_dir: str | Path, python: str | None = None) -> list[str]:
    """The verl 0.9.1 model-merger command line for an FSDP actor checkpoint."""
    return [
        python or sys.executable,
        "-m",
        "verl.model_merger",
        "merge",
        "--backend",
        "fsdp",
        "--local_dir",
        str(actor_dir),
        "--target_dir",
        str(target_dir),
    ]


def copy_processor_files(source: str | Path, target: str | Path) -> list[str]:
    """Copy the processor files of :data:`PROCESSOR_FILES` that ``target`` lacks; returns their names."""
    source, target = Path(source), Path(target)
    copied = []
    for name in PROCESSOR_FILES:
        if (source / name).is_file() and not (target / name).exists():
            shutil.copy2(source / name, target / name)
            copied.append(name)
    return copied


def merge_checkpoint(
    checkpoint_dir: str | Path,
    target_dir: str | Path,
    python: str | None = None,
    run: Callable[..., Any] = subprocess.run,
) -> Path:
    """The Hugging Face model directory of the latest checkpoint (merged into ``target_dir`` if needed).

    Returns ``actor/huggingface`` when it already has full weights, else ``target_dir`` after
    verl's model merger (skipped when ``target_dir`` already holds a merge of the same step).
    ``run`` is :func:`subprocess.run` (a parameter so tests can see the command).
    """
    actor = latest_actor_dir(checkpoint_dir)
    hf_dir = actor / "huggingface"
    if has_hf_weights(hf_dir):
        return hf_dir
    if not any(actor.glob("model_world_size_*_rank_*.pt")):
        raise CheckpointError(
            f"{actor} has neither FSDP model shards (model_world_size_*_rank_*.pt) nor HF weights "
            "in huggingface/; is this an FSDP actor checkpoint?"
        )
    target = Path(target_dir)
    marker = target / MERGE_MARKER
    if not (has_hf_weights(target) and marker.is_file() and marker.read_text() == str(actor.resolve())):
        target.mkdir(parents=True, exist_ok=True)
        result = run(merge_command(actor, target, python), capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-20:])
            raise RuntimeError(f"verl model merger failed on {actor} (exit {result.returncode}):\n{tail}")
        if not has_hf_weights(target):
            raise RuntimeError(f"verl model merger wrote no Hugging Face weights into {target}")
        marker.write_text(str(actor.resolve()))
    copy_processor_files(hf_dir, target)
    return target


def require_image_processor(model_dir: str | Path) -> None:
    """Raise unless ``model_dir`` has an image processor config (vLLM needs it for image prompts)."""
    if not any((Path(model_dir) / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise CheckpointError(
            f"{model_dir} has no preprocessor_config.json or processor_config.json, so vLLM cannot process images. "
            "verl saves the processor only when it supports it: for MedGemma train with eqpo.backends.verl imported "
            "(the Gemma3 patch), or copy those files from the base model into this folder."
        )


# ----------------------------------------------------------------------------------------------
# 2. Export rows -> chat requests
# ----------------------------------------------------------------------------------------------


def image_part(path: str) -> dict:
    """An OpenAI-format image content part for a local file."""
    return {"type": "image_url", "image_url": {"url": Path(path).as_uri()}}


def _content(text: str, images: list[str], where: str, as_parts: bool) -> str | list[dict]:
    """One message's content, split at ``<image>`` as verl splits it in training (a row with images
    has every message as a list of parts; a text-only row keeps plain strings)."""
    if not as_parts:
        return text
    parts, used = [], 0
    for segment in (s for s in _PLACEHOLDER.split(text) if s != ""):
        if segment == "<image>":
            if used >= len(images):
                raise ValueError(f"{where}: more <image> placeholders than images ({len(images)})")
            parts.append(image_part(images[used]))
            used += 1
        else:
            parts.append({"type": "text", "text": segment})
    if used != len(images):
        raise ValueError(f"{where}: {used} <image> placeholders for {len(images)} images")
    return parts


def build_requests(test: str | Path | pd.DataFrame, check_files: bool = True) -> list[Request]:
    """One chat (list of messages) per export row, in row order, with the training prompt and images."""
    rows = read_export(test)
    requests = []
    for i, row in enumerate(rows.itertuples(index=False)):
        where = f"row {i} ({row.extra_info.get('sample_id') if isinstance(row.extra_info, dict) else '?'})"
        images = image_paths(row.images, where, check_files)
        messages = [dict(m) for m in row.prompt]
        if images and sum(str(m["content"]).count("<image>") for m in messages) != len(images):
            raise ValueError(f"{where}: the prompt's <image> placeholders do not match its {len(images)} images")
        chat, offset = [], 0
        for message in messages:
            text = str(message["content"])
            n = text.count("<image>") if images else 0
            content = _content(text, images[offset : offset + n], where, as_parts=bool(images))
            chat.append({"role": message["role"], "content": content})
            offset += n
        requests.append(chat)
    return requests


def request_images(request: Request) -> list[str]:
    """Local file paths of a request's images, in order."""
    paths = []
    for message in request:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    paths.append(url2pathname(urlparse(url).path) if url.startswith("file://") else url)
    return paths


# ----------------------------------------------------------------------------------------------
# 3. Generators
# ----------------------------------------------------------------------------------------------


class Generator(Protocol):
    """Answers chats: one text per request, in order."""

    def generate(self, requests: Sequence[Request]) -> list[str]: ...


class VLLMGenerator:
    """Greedy answers with vLLM's offline ``LLM.chat`` (temperature 0, n 1).

    ``limit_images`` defaults to the largest image count among the requests and
    ``allowed_local_media_path`` to the images' common folder. The engine is built on the first
    :meth:`generate` call; ``engine_options`` go to ``vllm.LLM`` as extra keyword arguments.
    """

    def __init__(
        self,
        model_dir: str | Path,
        tensor_parallel: int = 1,
        max_tokens: int = 4096,
        limit_images: int | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        allowed_local_media_path: str | None = None,
        mm_processor_kwargs: dict | None = None,
        seed: int = 0,
        chat_template_content_format: str = "openai",
        **engine_options: Any,
    ):
        if tensor_parallel < 1 or max_tokens < 1:
            raise ValueError(f"tensor_parallel and max_tokens must be >= 1, got {tensor_parallel}, {max_tokens}")
        self.model_dir = str(model_dir)
        self.tensor_parallel = tensor_parallel
        self.max_tokens = max_tokens
        self.limit_images = limit_images
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.allowed_local_media_path = allowed_local_media_path
        self.mm_processor_kwargs = mm_processor_kwargs
        self.seed = seed
        self.chat_template_content_format = chat_template_content_format
        self.engine_options = engine_options
        self._llm = None

    def engine_kwargs(self, requests: Sequence[Request]) -> dict:
        """Keyword arguments for ``vllm.LLM`` given the requests it will answer."""
        images = [path for request in requests for path in request_images(request)]
        limit = (
            self.limit_images
            if self.limit_images is not None
            else max((len(request_images(r)) for r in requests), default=0)
        )
        media = self.allowed_local_media_path
        if media is None and images:
            media = os.path.commonpath([os.path.dirname(p) for p in images])
        kwargs = {
            "model": self.model_dir,
            "tensor_parallel_size": self.tensor_parallel,
            "seed": self.seed,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "limit_mm_per_prompt": {"image": limit},
        }
        if media:
            kwargs["allowed_local_media_path"] = media
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.mm_processor_kwargs:
            kwargs["mm_processor_kwargs"] = dict(self.mm_processor_kwargs)
        return {**kwargs, **self.engine_options}

    def sampling_kwargs(self) -> dict:
        """Greedy decoding: ``vllm.SamplingParams`` keyword arguments."""
        return {"n": 1, "temperature": 0.0, "max_tokens": self.max_tokens}

    @staticmethod
    def _vllm():
        try:
            import vllm
        except ImportError as error:
            raise ImportError(
                "VLLMGenerator needs vLLM, which is not installed in this environment (the GPU evaluation "
                "environment has it: verl[vllm]==0.9.1 pins vllm 0.24.0). Pass another Generator to "
                f"run_evaluation to evaluate without it. ({error})"
            ) from error
        return vllm

    def generate(self, requests: Sequence[Request]) -> list[str]:
        vllm = self._vllm()
        requests = list(requests)
        if not requests:
            return []
        if self._llm is None:
            self._llm = vllm.LLM(**self.engine_kwargs(requests))
        outputs = self._llm.chat(
            requests,
            vllm.SamplingParams(**self.sampling_kwargs()),
            chat_template_content_format=self.chat_template_content_format,
        )
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        return [output.outputs[0].text for output in outputs]


class HFGenerator:
    """Greedy answers with Hugging Face ``generate`` (``evaluation.engine: hf``): the engine of a
    machine without GPU (``config/verl_cpu.yaml``), where vLLM does not run.

    Each chat is rendered with the model directory's processor and its chat template (image parts
    become the template's image slots, filled with the files in order, as verl's training prompt
    does) and answered one at a time, greedily, up to ``max_tokens`` new tokens; the answer is the
    new tokens decoded without special tokens. ``threads``: torch threads while generating.
    """

    def __init__(self, model_dir: str | Path, max_tokens: int = 4096, threads: int | None = None):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.model_dir = str(model_dir)
        self.max_tokens = max_tokens
        self.threads = threads
        self._model = self._processor = None

    def _load(self) -> None:
        from eqpo.runs.hf_models import load_model, load_processor  # PIL processors when torchvision is absent

        self._processor = load_processor(self.model_dir)
        self._model = load_model(self.model_dir).eval()

    def _inputs(self, request: Request) -> dict:
        from PIL import Image

        messages, images = [], []
        for message in request:
            content = message["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image_url":
                        parts.append({"type": "image"})
                    else:
                        parts.append({"type": "text", "text": part["text"]})
                content = parts
            messages.append({"role": message["role"], "content": content})
        images = [Image.open(path).convert("RGB") for path in request_images(request)]
        text = self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {"images": [images]} if images else {}
        return dict(self._processor(text=[text], return_tensors="pt", **kwargs))

    def generate(self, requests: Sequence[Request]) -> list[str]:
        import torch

        if self._model is None:
            self._load()
        tokenizer = getattr(self._processor, "tokenizer", self._processor)
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            answers = []
            for request in requests:
                inputs = self._inputs(request)
                with torch.no_grad():
                    out = self._model.generate(
                        **inputs, do_sample=False, max_new_tokens=self.max_tokens, pad_token_id=tokenizer.pad_token_id
                    )
                answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
            return answers
        finally:
            torch.set_num_threads(before)


#: ``evaluation.engine`` -> the generator class that answers the test prompts.
ENGINES = {"vllm": VLLMGenerator, "hf": HFGenerator}


# ----------------------------------------------------------------------------------------------
# 4. Outputs -> predictions table
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# The whole step
# ----------------------------------------------------------------------------------------------


def run_evaluation(
    checkpoint_dir: str | Path,
    test_parquet: str | Path,
    out_parquet: str | Path,
    model_config: dict,
    generator: Generator | None = None,
    *,
    merged_dir: str | Path | None = None,
    max_tokens: int = 4096,
    max_model_len: int | None = None,
    tensor_parallel: int = 1,
    log: Callable[[str], None] = print,
    options: Any = None,
    max_samples: int | None = None,
    engine: str = "vllm",
) -> pd.DataFrame:
    """Checkpoint + test export -> ``out_parquet`` (the predictions table); returns the table.

    ``max_samples`` (``evaluation.max_samples``, e.g. the smoke run's 64) answers a seeded random
    subset of that many test rows instead of all of them.

    Without ``generator`` the latest checkpoint is merged (into ``merged_dir``, default
    ``<out_parquet's folder>/hf_model``) and answered by :class:`VLLMGenerator`; a given
    ``generator`` answers instead (no merge). ``engine`` (``evaluation.engine``): ``vllm`` (GPU) or ``hf``
    (:class:`HFGenerator`, a machine without GPU). ``model_config`` is the workflow's ``models`` entry
    (``backend: verl``; ``path`` names the base model in messages). ``options``: see :func:`predictions_from_outputs`.
    """
    if engine not in ENGINES:
        raise ValueError(f"evaluation.engine must be one of {sorted(ENGINES)}, got {engine!r}")
    if not isinstance(model_config, dict) or model_config.get("backend") != "verl":
        raise ValueError(f"run_evaluation evaluates verl-trained models; got model config {model_config!r}")
    out = Path(out_parquet)
    if not isinstance(test_parquet, pd.DataFrame):
        from eqpo.backends.verl.logs import register_custom_specs

        register_custom_specs(Path(test_parquet).parent)  # your own datasets' labels, to parse the answers
    rows = subsample(read_export(test_parquet), max_samples)
    requests = build_requests(rows)
    if generator is None:
        model_dir = merge_checkpoint(checkpoint_dir, merged_dir or out.parent / "hf_model")
        if any(request_images(r) for r in requests):
            require_image_processor(model_dir)
        log(
            f"evaluating {model_dir} (trained from {model_config.get('path')}) on {len(rows)} test prompts "
            f"with {engine}"
        )
        if engine == "hf":
            generator = HFGenerator(model_dir, max_tokens=max_tokens)
        else:
            generator = VLLMGenerator(
                model_dir, tensor_parallel=tensor_parallel, max_tokens=max_tokens, max_model_len=max_model_len
            )
    outputs = generator.generate(requests)
    table = predictions_from_outputs(rows, outputs, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    unparsed = float((table["prediction"].map(len) == 0).mean())
    log(f"{len(table)} predictions -> {out} (mean reward {table['reward'].mean():.4f}, unparseable {unparsed:.1%})")
    return table


__all__ = [
    "CheckpointError",
    "ENGINES",
    "Generator",
    "HFGenerator",
    "PREDICTION_COLUMNS",
    "VLLMGenerator",
    "build_requests",
    "copy_processor_files",
    "has_hf_weights",
    "latest_actor_dir",
    "merge_checkpoint",
    "merge_command",
    "predictions_from_outputs",
    "read_export",
    "request_images",
    "require_image_processor",
    "run_evaluation",
]
