"""What a GPU training job needs to know about a base model, without importing verl or torch.

- Where its weights are (:func:`resolve_weights`): a local directory, the Hugging Face cache
  (``HF_HUB_CACHE``, ``HF_HOME/hub`` or ``~/.cache/huggingface/hub``), or only the hub.
- What it is (:func:`model_type`): ``models.<m>.model_type`` in the config, checked against the
  checkpoint's ``config.json`` when the weights are on disk.
- Which attention implementation it trains with (:func:`attention`) and the verl overrides that
  implies (:func:`attention_overrides`). verl 0.9.1 loads the actor with
  ``override_config.attn_implementation`` and falls back to ``flash_attention_2``
  (``verl/workers/config/model.py``), which transformers refuses without the ``flash_attn``
  package; with ``use_remove_padding=True`` verl's Qwen2-VL patch calls ``flash_attn_varlen_func``
  directly. The default here is ``sdpa`` with ``use_remove_padding=False``, which needs nothing
  beyond torch. Gemma3 (MedGemma) always trains with sdpa, no remove-padding and no fused kernels
  (see :mod:`eqpo.backends.verl.gemma3` for why).
- How many parameters it has (:func:`parameter_count`, read from the safetensors headers) and how
  much disk a run's checkpoints take (:func:`run_disk_bytes`).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ATTENTION_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
DEFAULT_ATTENTION = "sdpa"
# The package an attention implementation needs beyond torch (checked before Ray starts).
ATTENTION_PACKAGES = {"flash_attention_2": "flash_attn"}
GEMMA3_MODEL_TYPES = ("gemma3",)

ATTN_KEY = "+actor_rollout_ref.model.override_config.attn_implementation"
REMOVE_PADDING_KEY = "actor_rollout_ref.model.use_remove_padding"
FUSED_KERNELS_KEY = "actor_rollout_ref.model.use_fused_kernels"

# Bytes per parameter of one verl FSDP checkpoint: the actor is trained in fp32
# (FSDPEngineConfig.model_dtype "fp32"), so model shards take 4 bytes and AdamW's two moments 8;
# ``hf_model`` in save_contents adds a bf16 copy (2 bytes). The model merger writes bf16 (2 bytes).
CHECKPOINT_BYTES_PER_PARAM = 12
HF_COPY_BYTES_PER_PARAM = 2
MERGED_BYTES_PER_PARAM = 2

_SAFETENSORS_ITEM_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class Weights:
    """Where a model's weights were found: ``where`` is ``local``, ``cache`` or ``hub`` (not on
    this machine; verl downloads them), ``directory`` the folder holding ``config.json``."""

    where: str
    directory: Path | None


def is_hub_id(path: str) -> bool:
    """``org/name`` (one slash, not a filesystem path)."""
    return not path.startswith(("/", "./", "../", "~", "file:")) and path.count("/") == 1


def hf_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it."""
    env = os.environ if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = (
        Path(env["HF_HOME"]).expanduser()
        if env.get("HF_HOME")
        else Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface"
    )
    return home / "hub"


def cached_snapshot(repo_id: str, env: Mapping[str, str] | None = None) -> Path | None:
    """The cached snapshot of ``repo_id`` that ``refs/main`` points to (else the newest one with a
    ``config.json``), or None when the model is not in the cache."""
    repo = hf_cache_dir(env) / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if (snapshot / "config.json").is_file():
            return snapshot
    snapshots = sorted(
        (p for p in (repo / "snapshots").glob("*") if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime
    )
    return snapshots[-1] if snapshots else None


def resolve_weights(path: str, env: Mapping[str, str] | None = None) -> Weights:
    """Find ``models.<m>.path``: a local directory with ``config.json``, the HF cache, or the hub.
    Raises FileNotFoundError for a local path that does not exist or has no ``config.json``."""
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{path!r} exists but has no config.json: it is not a Hugging Face model directory")
        return Weights("local", local.resolve())
    if not is_hub_id(path):
        raise FileNotFoundError(f"{path!r} is not a hub id (org/name) and no such local directory exists")
    snapshot = cached_snapshot(path, env)
    return Weights("cache", snapshot) if snapshot is not None else Weights("hub", None)


def read_model_type(directory: Path | None) -> str | None:
    """``model_type`` of the checkpoint's ``config.json`` (None without a directory)."""
    if directory is None:
        return None
    return json.loads((Path(directory) / "config.json").read_text()).get("model_type")


def model_type(entry: Mapping[str, Any], model: str, weights: Weights | None = None) -> str | None:
    """The model's ``model_type``: ``models.<m>.model_type``, checked against the checkpoint's
    ``config.json`` when the weights are on this machine (they win when the config names none)."""
    declared = entry.get("model_type")
    found = read_model_type(weights.directory) if weights is not None else None
    if declared and found and declared != found:
        raise ValueError(
            f"models.{model}.model_type is {declared!r} but {weights.directory}/config.json says "
            f"{found!r}; correct models.{model}.model_type"
        )
    return found or declared


def is_gemma3(kind: str | None) -> bool:
    return kind in GEMMA3_MODEL_TYPES


def attention(entry: Mapping[str, Any], model: str, kind: str | None) -> str:
    """``models.<m>.attention`` (default sdpa), checked: Gemma3 trains with sdpa only."""
    choice = entry.get("attention", DEFAULT_ATTENTION)
    if choice not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"models.{model}.attention = {choice!r}; choose one of {list(ATTENTION_IMPLEMENTATIONS)}")
    if is_gemma3(kind) and choice != "sdpa":
        raise ValueError(
            f"models.{model} is Gemma3-based ({kind}) and trains with attention: sdpa only (its image "
            f"tokens attend bidirectionally through an explicit mask); remove models.{model}.attention "
            f"or set it to sdpa"
        )
    return choice


def attention_overrides(choice: str, kind: str | None) -> dict[str, Any]:
    """verl overrides for the attention implementation: remove-padding (packed sequences) only with
    FlashAttention-2, and no fused kernels for Gemma3 (verl's generic fused forward drops its
    ``pixel_values`` and ``token_type_ids``)."""
    out: dict[str, Any] = {ATTN_KEY: choice, REMOVE_PADDING_KEY: choice == "flash_attention_2"}
    if is_gemma3(kind):
        out[FUSED_KERNELS_KEY] = False
    return out


def parameter_count(directory: Path | None) -> int | None:
    """Number of parameters of the safetensors checkpoint in ``directory`` (summed from the files'
    headers, no tensor is read); None when there is no directory or no safetensors file."""
    if directory is None:
        return None
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in tensor["shape"]:
                count *= int(dim)
            total += count
    return total


def parameters_of(entry: Mapping[str, Any], weights: Weights | None) -> int | None:
    """The parameter count from the weights on disk, else ``models.<m>.params_billion``."""
    counted = parameter_count(weights.directory) if weights is not None else None
    if counted is not None:
        return counted
    billions = entry.get("params_billion")
    return int(round(float(billions) * 1e9)) if billions is not None else None


def checkpoint_bytes(n_params: int, save_hf_model: bool = False) -> int:
    """Disk of one verl checkpoint (one ``global_step_N`` folder) of a model with ``n_params``."""
    return n_params * (CHECKPOINT_BYTES_PER_PARAM + (HF_COPY_BYTES_PER_PARAM if save_hf_model else 0))


def run_disk_bytes(n_params: int, keep: int | None = 1, save_hf_model: bool = False, saves: int | None = None) -> int:
    """Peak disk of one run: verl writes a new checkpoint before it deletes the oldest, so ``keep + 1``
    checkpoints exist at once (``keep`` None keeps every one of ``saves``), plus the merged bf16
    weights that evaluation writes."""
    if keep is None:
        if saves is None:
            raise ValueError("keep=None (keep every checkpoint) needs the number of saves")
        held = saves
    else:
        held = keep + 1
    return held * checkpoint_bytes(n_params, save_hf_model) + n_params * MERGED_BYTES_PER_PARAM
