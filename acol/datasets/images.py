"""Decoding images and masks in full; every failure is an error naming the file.

8-bit grayscale, palette, CMYK and alpha images are converted to RGB (the alpha channel is dropped);
16-bit and 32-bit images are rejected rather than clipped to 8 bits. A truncated file is an error:
PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` would fill its missing part with grey, so reading refuses
to run while it is set.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

# what PIL raises on a corrupt or truncated file (UnidentifiedImageError is an OSError)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
DEEP_MODES = ("I", "F")     # prefixes of the 16-bit and 32-bit modes (I, I;16, I;16B, F, ...)


class ImageError(OSError):
    """An image or mask that is missing, cannot be decoded, or does not fit its metadata; the message (one
    line) names the file. From a DataLoader worker it arrives wrapped: `dataset.worker_error_line`."""


def _decode(path: Path, mode: str, what: str) -> np.ndarray:
    """The file decoded in full and converted to `mode` ("RGB" or "L"). what: "image" or "mask"."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(f"PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set (by imported code?): a truncated {what} "
                         f"would load as grey pixels; set it to False (reading {path})")
    try:
        with Image.open(path) as img:
            if not img.mode.startswith(DEEP_MODES):
                return np.array(img.convert(mode))
            deep = img.mode
    except FileNotFoundError:
        raise ImageError(f"{what} not found: {path}") from None
    except DECODE_ERRORS as e:
        raise ImageError(f"cannot read {what} {path}: {e}") from None
    raise ImageError(f"{what} {path} has {deep} pixels (16 or 32 bits), which would be clipped to 8 bits; "
                     f"convert it to 8-bit RGB or grayscale")


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8."""
    return _decode(path, "RGB", "image")


def read_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) uint8 in {0, 1}: pixels > 127 of the grayscale image. size: its image's (W, H), which
    the mask must have."""
    mask = (_decode(path, "L", "mask") > 127).astype(np.uint8)
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        raise ImageError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {size[0]}x{size[1]}")
    return mask
