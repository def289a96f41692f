"""Images without torchvision, for verl's processes on a CPU run (:mod:`eqpo.backends.verl.cpu`): no
torchvision wheel pairs with the CPU torch, and both ``qwen_vl_utils`` (verl's image loading) and
every transformers video processor need it.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def open_image(item: Any):
    """One image of a verl message (``{"type": "image", "image": path | PIL image | {"bytes": ...}}``)
    as an RGB PIL image, unresized (the model's image processor resizes it)."""
    import io

    from PIL import Image

    image = item.get("image", item.get("image_url")) if isinstance(item, dict) else item
    if isinstance(image, dict) and "bytes" in image:
        image = Image.open(io.BytesIO(image["bytes"]))
    elif isinstance(image, str):
        image = Image.open(image[len("file://") :] if image.startswith("file://") else image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"cannot open image {image!r}: give a local path, file:// URL, bytes or a PIL image")
    return image.convert("RGB")


def images_of(messages: list[dict]) -> tuple[list | None, bool]:
    """The images of verl's structured messages, in order (None when there is none), and whether a
    video is among them."""
    images, videos = [], False
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for item in content:
            if isinstance(item, dict) and item.get("type") == "image":
                images.append(open_image(item))
            elif isinstance(item, dict) and item.get("type") == "video":
                videos = True
    return (images or None), videos


def image_only_processors() -> None:
    """Without torchvision, make ``AutoVideoProcessor`` hand out an image-only stand-in, so that the
    Qwen-VL processors (which require a video processor) load in every verl process."""
    if has_torchvision():
        return
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    from eqpo.runs.hf_models import image_only_video_processor

    AutoVideoProcessor.from_pretrained = classmethod(lambda cls, *a, **kw: image_only_video_processor())
