"""A local Hugging Face model directory, loaded without the hub and without torchvision: its processor
(tokenizer-only models: the tokenizer) and its model. Shared by the trl backend, the verl backend's
CPU path and hf engine, and the tiny vision-language fixture; transformers is imported only when a
function runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def image_only_video_processor():
    """A stand-in video processor for environments without torchvision: every transformers video
    processor needs it, and the Qwen-VL processors refuse to build without one. Images never touch
    it; a video prompt fails with a clear error."""
    import transformers
    from transformers.utils import PushToHubMixin

    class ImageOnly(transformers.BaseVideoProcessor, PushToHubMixin):
        _auto_class = None

        def __init__(self):  # BaseVideoProcessor.__init__ needs torchvision
            pass

        def __call__(self, *args, **kwargs):
            raise RuntimeError("video inputs need torchvision, which is not installed (images work without it)")

        def to_dict(self):
            return {"video_processor_type": "none: torchvision is absent"}

    return ImageOnly()


def load_processor(path: str | Path):
    """The model directory's processor (tokenizer-only models: the tokenizer). Without torchvision
    the image processor falls back to transformers' PIL implementation and videos are refused."""
    import importlib.util

    from transformers import AutoProcessor
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    if importlib.util.find_spec("torchvision") is not None:
        return AutoProcessor.from_pretrained(str(path))
    original = AutoVideoProcessor.__dict__["from_pretrained"]
    AutoVideoProcessor.from_pretrained = classmethod(lambda cls, *a, **kw: image_only_video_processor())
    try:
        return AutoProcessor.from_pretrained(str(path))
    finally:
        AutoVideoProcessor.from_pretrained = original


def load_model(path: str | Path, dtype: str | None = None):
    """The model directory's image-text-to-text model (causal LM for text-only models)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs = {}
    if dtype not in (None, "auto"):
        kwargs["dtype"] = getattr(torch, dtype)
    config = AutoConfig.from_pretrained(str(path))
    if hasattr(config, "vision_config"):
        return AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)
