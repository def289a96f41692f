"""verl's ``RLHFDataset`` for CPU runs without torchvision (``data.custom_cls``, set by
:data:`eqpo.backends.verl.cpu.CPU_OVERRIDES`).

verl opens a prompt's images with ``qwen_vl_utils``, which imports torchvision, and no torchvision
wheel pairs with the CPU torch. Here they are opened with PIL and handed to the model's image
processor unresized; that processor resizes them to its patch grid (on GPU qwen_vl_utils resizes
first, to the same grid rule). Videos are refused with a clear error. Imported by verl when it builds
the dataset, after the CPU platform is registered.
"""

from __future__ import annotations

from verl.utils.dataset.rl_dataset import RLHFDataset

from eqpo.backends.verl.cpu_images import images_of


class PilImageDataset(RLHFDataset):
    """``RLHFDataset`` whose images are read with PIL (see the module docstring)."""

    @classmethod
    def _process_multi_modal_info(cls, messages, image_patch_size, config):
        images, videos = images_of(messages)
        if videos:
            raise ValueError("video prompts need torchvision (qwen_vl_utils); the CPU path reads images only")
        return images, None, cls._extract_audio_info(messages)
