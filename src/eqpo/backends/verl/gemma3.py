"""MedGemma (Gemma3 vision-language) support for verl 0.9.1, as a monkeypatch.

verl 0.9.1 does not support ``Gemma3ForConditionalGeneration`` (MedGemma-4B-IT) for multimodal RL:

1. ``verl.utils.tokenizer.hf_processor`` raises ``Unsupported processor type: Gemma3Processor``,
   swallows the error and returns ``None``; multimodal rows then fail in ``RLHFDataset``
   (``processor is needed to process multimodal data``).
2. The agent loop (``AgentLoopWorker._compute_multi_modal_inputs``) rebuilds each trajectory's
   processor features from the *decoded* text, ``skip_special_tokens=True``. Gemma3's processor
   needs its ``<start_of_image>`` marker in that text (it raises "Prompt contained 0 image tokens
   but received 1 images" when the tokenizer treats the marker as special), and the
   ``token_type_ids`` it returns come from a re-tokenisation that need not match the trajectory's
   token ids.
3. ``token_type_ids`` (1 on image tokens) is what makes HF's Gemma3 attend bidirectionally within
   each image, as vLLM's rollout does. It has one entry per token, so
   the trajectories of a micro-batch have different lengths: ``verl.utils.model.
   extract_multi_modal_inputs`` concatenates such a key with ``torch.cat`` (an error) unless it is
   in ``verl.utils.model._VARLEN_MULTI_MODAL_KEYS``, where it is right-padded like the engine pads
   ``input_ids`` when ``use_remove_padding=False``.
4. verl's synthetic padding rows (``verl.trainer.ppo.padding_utils``) carry empty
   ``multi_modal_inputs``, so a micro-batch can have fewer ``token_type_ids`` rows than
   ``input_ids`` rows.

5. verl's vLLM server sends vLLM the prompt ids with each image block already expanded
   (``\n\n<start_of_image>`` + image tokens + ``<end_of_image>\n\n``) and collapses them only for
   Qwen-VL processors (``verl.workers.rollout.utils.qwen2_5_vl_dedup_image_tokens``). vLLM 0.24
   expands every ``<start_of_image>`` of a token prompt again (``gemma3_mm``'s prompt replacement),
   so each rollout would see two image blocks, the second embedded as plain text, with no error.

:func:`patch_verl_for_gemma3` (idempotent) fixes all five in the calling process:

- ``hf_processor`` returns the ``Gemma3Processor`` (with ``processor.config`` set, as verl does for
  the processors it knows; no ``get_rope_index``, so positions stay 1-D) when the checkpoint's
  ``config.json`` has ``model_type == "gemma3"``, and defers to verl otherwise. Every ``verl.*``
  module that bound the original function by name is rebound.
- ``AgentLoopWorker._compute_multi_modal_inputs`` computes, for a Gemma3 processor, the pixel
  values from the trajectory's images with the processor's own image pipeline (same
  ``mm_processor_kwargs``) and ``token_type_ids`` from the trajectory's real token ids
  (:func:`gemma3_token_type_ids`), so they are aligned token for token. Other processors are
  untouched.
- ``"token_type_ids"`` joins ``_VARLEN_MULTI_MODAL_KEYS``.
- ``Gemma3Model.forward`` derives ``token_type_ids`` from ``input_ids`` when images are given and
  ``token_type_ids`` is missing or its shape differs from ``input_ids`` (padding rows), so the
  training forward always uses the image-bidirectional mask.
- ``qwen2_5_vl_dedup_image_tokens`` (rebound in ``verl.workers.rollout.utils`` and every ``verl.*``
  module that imported it) also collapses a Gemma3 prompt to one ``<start_of_image>`` per image
  (:func:`gemma3_unexpanded_prompt_ids`), which vLLM expands back to verl's ids.

The patch must run in every process that builds the processor or the model: the TaskRunner, the
agent-loop workers and the FSDP actor/ref workers. ``import eqpo.backends.verl`` applies it (add
``from .gemma3 import GEMMA3_OVERRIDES, patch_verl_for_gemma3`` and ``patch_verl_for_gemma3()`` to
``eqpo/backends/verl/__init__.py``), and ``VERL_USE_EXTERNAL_MODULES=eqpo.backends.verl`` imports that package
at ``import verl`` in every Ray process (checked: with ``VERL_USE_EXTERNAL_MODULES`` naming a module
that applies the patch, ``import verl`` succeeds and later-imported modules such as
``verl.workers.config.model`` and ``verl.model_merger`` see the patched ``hf_processor``). A MedGemma
run also needs :data:`GEMMA3_OVERRIDES`, as verl's own Gemma4 recipe: sdpa attention (an explicit
mask carries the bidirectional image blocks; HF's FlashAttention-2 path applies only causal and
padding masking), ``use_remove_padding=False`` (the padded path checked here; verl's packed path,
which forwards no attention mask and a (1, total) ``input_ids``, was not checked with Gemma3) and no
fused kernels (verl's generic fused forward, used for unlisted models, passes neither
``pixel_values`` nor ``token_type_ids`` to the model).

Verified on CPU (tests/backends/verl/test_gemma3.py) with a tiny random Gemma3 and a locally built
processor: verl's ``hf_processor`` before (None) and after (the processor) the patch; verl's own
prompt builder (``VLContinuousTokenBuilder``) on a chat with one image; the patched agent-loop
features; verl's FSDP engine ``prepare_model_inputs`` (``use_remove_padding=False``) on a micro-batch
of two trajectories of different lengths, which keeps ``token_type_ids`` per trajectory,
right-padded exactly like ``input_ids`` (and fails without the variable-length key); with a
synthetic padding row added, a forward pass of the tiny model (loaded through verl's
``get_hf_auto_model_class``, sdpa) gives finite logits equal to each trajectory's unpadded forward
(without the forward patch it raises), and image positions differ from a causal-only forward; and
the Hydra overrides against verl's ``ppo_trainer`` config. The images were opened with PIL, not
``qwen_vl_utils.fetch_image`` (it needs torchvision, absent from the CPU environment). Not verified
here: whether the real MedGemma tokenizer marks ``<start_of_image>`` as special (which is what makes
verl's unpatched path fail; the patched path does not depend on it), and, needing GPUs and vLLM:
a real MedGemma rollout (vLLM's image attention pattern; its expansion of the collapsed prompt is
replayed on CPU with a copy of vLLM 0.24's token-replacement and newline-merge logic, not with vLLM
itself), FSDP sharding of the real model, and log-prob agreement between vLLM and the training
forward (watch verl's ``training/rollout_probs_diff*`` metrics on the first GPU run).
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from typing import Any

from eqpo.runs.base_models import GEMMA3_MODEL_TYPES, attention_overrides

GEMMA3_MODEL_TYPE = "gemma3"
GEMMA3_PROCESSOR = "Gemma3Processor"
TOKEN_TYPE_KEY = "token_type_ids"

# Hydra overrides a MedGemma run needs on top of the usual ones (each key checked against verl
# 0.9.1's ppo_trainer config; override_config is an empty dict there, hence the "+"). The launcher
# adds them to every Gemma3 run through eqpo.runs.base_models.attention_overrides, their one source.
GEMMA3_OVERRIDES: tuple[str, ...] = tuple(
    f"{key}={str(value).lower() if isinstance(value, bool) else value}"
    for key, value in attention_overrides("sdpa", GEMMA3_MODEL_TYPES[0]).items()
)

_MARK = "_eqpo_gemma3_patch"
_original_hf_processor = None


def is_gemma3_processor(processor: Any) -> bool:
    """True for a ``Gemma3Processor`` (or a subclass of it)."""
    return any(cls.__name__ == GEMMA3_PROCESSOR for cls in type(processor).__mro__)


def gemma3_token_type_ids(input_ids, image_token_id: int):
    """Gemma3's ``token_type_ids`` for ``input_ids`` (any shape): 1 on image tokens, else 0.

    This is exactly what ``Gemma3Processor`` returns (``create_mm_token_type_ids``), computed from
    the token ids that are actually forwarded.
    """
    if image_token_id is None:
        raise ValueError("Gemma3 needs an image token id to build token_type_ids")
    return (input_ids == int(image_token_id)).long()


# ----------------------------------------------------------------------------------------------
# 1. hf_processor
# ----------------------------------------------------------------------------------------------


def _is_gemma3_checkpoint(name_or_path, **kwargs) -> bool:
    """True when ``name_or_path``'s config is a Gemma3 vision-language config."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    except Exception:  # no config.json (e.g. a tokenizer-only dir): let verl decide
        return False
    return getattr(config, "model_type", None) == GEMMA3_MODEL_TYPE


def load_gemma3_processor(name_or_path, **kwargs):
    """The checkpoint's ``Gemma3Processor`` prepared the way verl prepares the processors it knows
    (``processor.config`` = the model config; Gemma3 uses 1-D RoPE, so no ``get_rope_index``)."""
    from transformers import AutoConfig, AutoProcessor

    processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    if not is_gemma3_processor(processor):
        raise ValueError(f"{name_or_path} has a Gemma3 config but a {type(processor).__name__}, not a Gemma3Processor")
    processor.config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    return processor


def hf_processor_with_gemma3(name_or_path, **kwargs):
    """verl's ``hf_processor`` that also accepts Gemma3 checkpoints (same failure convention:
    a warning and ``None``)."""
    if _is_gemma3_checkpoint(name_or_path, **kwargs):
        try:
            return load_gemma3_processor(name_or_path, **kwargs)
        except Exception as error:  # mirror verl: multimodal processing is then unavailable
            warnings.warn(f"Failed to create Gemma3 processor: {error}", stacklevel=2)
            return None
    return original_hf_processor(name_or_path, **kwargs)


setattr(hf_processor_with_gemma3, _MARK, True)


def _patch_hf_processor() -> None:
    global _original_hf_processor
    from verl.utils.tokenizer import tokenizer as tokenizer_module

    current = tokenizer_module.hf_processor
    if getattr(current, _MARK, False):
        original = _original_hf_processor
    else:
        original = _original_hf_processor = current
    for name, module in list(sys.modules.items()):
        if not (name == "verl" or name.startswith("verl.")):
            continue
        try:
            bound = getattr(module, "hf_processor", None)
        except Exception:  # a module with a lazy __getattr__ that fails
            continue
        if bound is original:
            module.hf_processor = hf_processor_with_gemma3


def original_hf_processor(name_or_path, **kwargs):
    """verl's unpatched ``hf_processor`` (for comparisons)."""
    if _original_hf_processor is None:
        from verl.utils.tokenizer.tokenizer import hf_processor

        return hf_processor(name_or_path, **kwargs)
    return _original_hf_processor(name_or_path, **kwargs)


# ----------------------------------------------------------------------------------------------
# 2. Agent-loop features per trajectory
# ----------------------------------------------------------------------------------------------


def gemma3_multi_modal_inputs(processor, input_ids, images, mm_processor_kwargs: dict | None = None) -> dict:
    """Processor features of one trajectory for the training forward.

    ``pixel_values`` come from the processor's own image pipeline (called with one
    ``<start_of_image>`` per image, so pan-and-scan and other ``mm_processor_kwargs`` behave as in
    the prompt); ``token_type_ids`` (1, L) from the trajectory's ``input_ids`` (L,). Raises when
    the number of image tokens in ``input_ids`` does not match the images.
    """
    if not images:
        return {}
    kwargs = dict(mm_processor_kwargs or {})
    kwargs["return_tensors"] = "pt"
    text = [" ".join([processor.boi_token] * len(images))]
    features = dict(processor(text=text, images=list(images), **kwargs))
    expected = int((features.pop("input_ids") == processor.image_token_id).sum())
    for key in ("attention_mask", TOKEN_TYPE_KEY, "num_crops"):
        features.pop(key, None)
    ids = input_ids.reshape(1, -1)
    token_type_ids = gemma3_token_type_ids(ids, processor.image_token_id)
    found = int(token_type_ids.sum())
    if found != expected:
        raise ValueError(
            f"Gemma3 trajectory has {found} image tokens but its {len(images)} image(s) need {expected}; "
            "the prompt and the training features were built with different processor settings"
        )
    features[TOKEN_TYPE_KEY] = token_type_ids
    return features


def _patched_compute_multi_modal_inputs(original):
    @functools.wraps(original)
    def compute(self, output, input_ids):
        if self.processor is None or not is_gemma3_processor(self.processor):
            return original(self, output, input_ids)
        data = output.multi_modal_data or {}
        if data.get("videos") or data.get("audios"):
            raise ValueError("Gemma3 (MedGemma) takes images only; this trajectory has videos or audio")
        kwargs = output.mm_processor_kwargs
        if kwargs is None:
            kwargs = self._get_mm_processor_kwargs(None)
        return gemma3_multi_modal_inputs(self.processor, input_ids, data.get("images"), kwargs)

    setattr(compute, _MARK, True)
    return compute


def _patch_agent_loop() -> None:
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    if not getattr(AgentLoopWorker._compute_multi_modal_inputs, _MARK, False):
        AgentLoopWorker._compute_multi_modal_inputs = _patched_compute_multi_modal_inputs(
            AgentLoopWorker._compute_multi_modal_inputs
        )


# ----------------------------------------------------------------------------------------------
# 5. The rollout prompt vLLM gets
# ----------------------------------------------------------------------------------------------


def gemma3_unexpanded_prompt_ids(prompt_ids, processor) -> list[int]:
    """verl's Gemma3 prompt ids with every expanded image block collapsed to one ``<start_of_image>``.

    verl builds rollout prompts through the processor, so each image is already the block
    ``processor.full_image_sequence`` (``"\n\n<start_of_image>" + image tokens + "<end_of_image>\n\n"``).
    vLLM (0.24, ``gemma3_mm``) treats a token prompt as unexpanded and replaces every
    ``<start_of_image>`` with that block again, merging the newlines around it into single tokens
    as Gemma's tokenizer does. So vLLM must get the prompt with the blocks collapsed; then its
    expansion gives back verl's ids token for token (tests/backends/verl/test_gemma3.py replays it). The
    ids are decoded, each block replaced by the marker, and the text re-encoded, because the
    block's newlines are merged with their neighbours into single tokens (``"\n\n\n"``).
    ``prompt_ids``: a list of token ids (L,); returns the shorter list. Raises when an image token
    is left outside a complete block (a processor setting, such as pan-and-scan, that this
    collapse does not undo).
    """
    tokenizer = processor.tokenizer
    ids = [int(i) for i in prompt_ids]
    if processor.image_token_id not in ids:
        return ids
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    blocks = text.count(processor.full_image_sequence)
    collapsed = tokenizer.encode(
        text.replace(processor.full_image_sequence, processor.boi_token), add_special_tokens=False
    )
    if blocks == 0 or processor.image_token_id in collapsed:
        raise ValueError(
            f"a Gemma3 rollout prompt has image tokens outside the {processor.image_seq_length}-token blocks its "
            "processor writes (pan-and-scan or another image setting?): vLLM would expand them again, so the "
            "rollout is refused. Turn pan-and-scan off (mm_processor_kwargs) for MedGemma runs."
        )
    return collapsed


def _patched_rollout_prompt_ids(original):
    """verl's ``qwen2_5_vl_dedup_image_tokens`` (the ids verl's rollout servers send to the engine)
    that also collapses Gemma3 prompts; other processors get verl's own behaviour."""

    @functools.wraps(original)
    def prompt_ids_for_rollout(prompt_ids, processor):
        if processor is not None and is_gemma3_processor(processor):
            return gemma3_unexpanded_prompt_ids(prompt_ids, processor)
        return original(prompt_ids, processor)

    setattr(prompt_ids_for_rollout, _MARK, True)
    return prompt_ids_for_rollout


ROLLOUT_PROMPT_FUNCTION = "qwen2_5_vl_dedup_image_tokens"


def _patch_rollout_prompt() -> None:
    """Rebind ``verl.workers.rollout.utils.qwen2_5_vl_dedup_image_tokens``, and every ``verl.*``
    module already holding it by name (the vLLM server imports it with ``from ... import``; a
    module imported after the patch gets the patched function)."""
    from verl.workers.rollout import utils as rollout_utils

    current = getattr(rollout_utils, ROLLOUT_PROMPT_FUNCTION)
    original = getattr(current, "__wrapped__", current) if getattr(current, _MARK, False) else current
    patched = current if getattr(current, _MARK, False) else _patched_rollout_prompt_ids(original)
    for name, module in list(sys.modules.items()):
        if name == "verl" or name.startswith("verl."):
            try:
                bound = getattr(module, ROLLOUT_PROMPT_FUNCTION, None)
            except Exception:  # a module with a lazy __getattr__ that fails
                continue
            if bound is original:
                setattr(module, ROLLOUT_PROMPT_FUNCTION, patched)


# ----------------------------------------------------------------------------------------------
# 3 + 4. Variable-length key and the model forward
# ----------------------------------------------------------------------------------------------


def _patch_varlen_keys() -> None:
    from verl.utils import model as model_utils

    model_utils._VARLEN_MULTI_MODAL_KEYS.add(TOKEN_TYPE_KEY)


def _patched_gemma3_forward(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        arguments = bound.arguments
        input_ids, pixel_values = arguments.get("input_ids"), arguments.get("pixel_values")
        token_type_ids = arguments.get(TOKEN_TYPE_KEY)
        if (
            input_ids is not None
            and pixel_values is not None
            and (token_type_ids is None or tuple(token_type_ids.shape) != tuple(input_ids.shape))
        ):
            arguments[TOKEN_TYPE_KEY] = gemma3_token_type_ids(input_ids, self.config.image_token_id)
        return original(*bound.args, **bound.kwargs)

    setattr(forward, _MARK, True)
    return forward


def _patch_model_forward() -> None:
    from transformers.models.gemma3 import modeling_gemma3

    if not getattr(modeling_gemma3.Gemma3Model.forward, _MARK, False):
        modeling_gemma3.Gemma3Model.forward = _patched_gemma3_forward(modeling_gemma3.Gemma3Model.forward)


def patch_verl_for_gemma3() -> tuple[str, ...]:
    """Apply the five Gemma3 patches in this process (idempotent); returns what is patched."""
    _patch_hf_processor()
    _patch_varlen_keys()
    _patch_agent_loop()
    _patch_model_forward()
    _patch_rollout_prompt()
    return (
        "verl.utils.tokenizer.hf_processor",
        "verl.experimental.agent_loop.agent_loop.AgentLoopWorker._compute_multi_modal_inputs",
        "verl.utils.model._VARLEN_MULTI_MODAL_KEYS",
        "transformers.models.gemma3.modeling_gemma3.Gemma3Model.forward",
        f"verl.workers.rollout.utils.{ROLLOUT_PROMPT_FUNCTION}",
    )


def is_patched() -> bool:
    """True when every part of :func:`patch_verl_for_gemma3` is in place in this process."""
    from transformers.models.gemma3 import modeling_gemma3
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils import model as model_utils
    from verl.utils.tokenizer import tokenizer as tokenizer_module
    from verl.workers.rollout import utils as rollout_utils

    return (
        getattr(tokenizer_module.hf_processor, _MARK, False)
        and getattr(getattr(rollout_utils, ROLLOUT_PROMPT_FUNCTION), _MARK, False)
        and getattr(AgentLoopWorker._compute_multi_modal_inputs, _MARK, False)
        and TOKEN_TYPE_KEY in model_utils._VARLEN_MULTI_MODAL_KEYS
        and getattr(modeling_gemma3.Gemma3Model.forward, _MARK, False)
    )


__all__ = [
    "GEMMA3_OVERRIDES",
    "gemma3_multi_modal_inputs",
    "gemma3_token_type_ids",
    "gemma3_unexpanded_prompt_ids",
    "hf_processor_with_gemma3",
    "is_gemma3_processor",
    "is_patched",
    "load_gemma3_processor",
    "original_hf_processor",
    "patch_verl_for_gemma3",
]
