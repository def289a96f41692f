"""Images, DICOM, CT windows, NIfTI volumes and videos -> resized 8-bit PNG files.

Every function raises :class:`CorruptMedia` for a file it cannot read, so preprocessing can skip
the sample and count it in the manifest instead of crashing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_SIDE = 512  # pixels; large medical images are resized (Qwen-VL spends a token per 28x28 patch)
# CT windows, (level, width) in Hounsfield units, that the ct-ich 1.3.1 README gives for the JPEG
# images, so slices windowed from the NIfTI release look like the JPEG releases' slices.
BRAIN_WINDOW = (40.0, 120.0)
BONE_WINDOW = (700.0, 3200.0)


class CorruptMedia(IOError):
    """A media file that cannot be decoded."""


def save_png(pixels: np.ndarray | Image.Image, dest: Path, max_side: int = MAX_SIDE) -> Path:
    """Save an image (uint8 array or PIL image) as PNG, shrunk so its longer side is <= max_side."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels))
    image.thumbnail((max_side, max_side))
    dest.parent.mkdir(parents=True, exist_ok=True)
    image.save(dest, format="PNG")
    return dest


def resize_image(src: Path, dest: Path, max_side: int = MAX_SIDE) -> Path:
    """A JPEG/PNG photo or radiograph -> resized PNG (grayscale kept grayscale, else RGB)."""
    try:
        with Image.open(src) as image:
            image.load()
            mode = "L" if image.mode in ("L", "I", "I;16", "F") else "RGB"
            return save_png(image.convert(mode), dest, max_side)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptMedia(f"{src}: {err}") from None


def to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Linearly map [low, high] (default: the array's min and max) to 0..255, clipping outside."""
    values = np.asarray(values, dtype=float)
    low = float(np.nanmin(values)) if low is None else low
    high = float(np.nanmax(values)) if high is None else high
    scaled = (values - low) / max(high - low, 1e-9)
    return np.clip(np.nan_to_num(scaled) * 255.0, 0, 255).astype(np.uint8)


def window(hu: np.ndarray, level_width: tuple[float, float]) -> np.ndarray:
    """A CT window (level, width) in Hounsfield units -> uint8: level - width/2 -> 0 and
    level + width/2 -> 255, linear in between (truncated to an integer), clipped outside."""
    level, width = level_width
    return to_uint8(hu, level - width / 2, level + width / 2)


def dicom_to_png(src: Path, dest: Path, max_side: int = MAX_SIDE) -> tuple[Path, dict]:
    """A DICOM image -> PNG (VOI LUT applied, MONOCHROME1 inverted); also returns its age/sex tags."""
    import pydicom
    from pydicom.pixels import apply_voi_lut

    try:
        ds = pydicom.dcmread(src)
        pixels = apply_voi_lut(ds.pixel_array, ds)
    except Exception as err:  # pydicom raises many types for broken files
        raise CorruptMedia(f"{src}: {err}") from None
    image = to_uint8(pixels)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        image = 255 - image
    tags = {"age": getattr(ds, "PatientAge", None), "sex": getattr(ds, "PatientSex", None)}
    return save_png(image, dest, max_side), tags


def nifti_volume(src: Path) -> np.ndarray:
    """A NIfTI volume as an (X, Y, Z) float array (CT: Hounsfield units)."""
    import nibabel

    try:
        return np.asarray(nibabel.load(str(src)).get_fdata(), dtype=np.float32)
    except Exception as err:
        raise CorruptMedia(f"{src}: {err}") from None


def evenly_spaced(n_items: int, n: int = 4) -> np.ndarray:
    """n indices spread over 0..n_items-1 (all of them when there are fewer)."""
    if n_items <= 0:
        raise CorruptMedia("no frames")
    return np.unique(np.linspace(0, n_items - 1, num=min(n, n_items)).round().astype(int))


def video_frames(src: Path, n: int = 4) -> list[np.ndarray]:
    """n evenly spaced RGB frames (uint8 arrays) of a video file."""
    import av

    try:
        with av.open(str(src)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except Exception as err:
        raise CorruptMedia(f"{src}: {err}") from None
    return [frames[i] for i in evenly_spaced(len(frames), n)]
