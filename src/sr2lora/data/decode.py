"""Open an image file as 8-bit RGB, scaling 16-bit and float images instead of clipping them.

PIL's ``convert("RGB")`` clips the integer modes (``I;16``, ``I``) and the float mode ``F`` at 255, so a
16-bit PNG or an integer/float TIFF comes out all white (or, for floats in [0, 1], all black). Here:

* 16-bit integers (``I;16*``, a 16-bit PNG opened as ``I``, a TIFF with 9..16 bits per sample) are scaled
  by 255/(2^bits − 1);
* other ``I`` images (32-bit integer TIFFs) are kept when their values fit 0..255 and scaled by 255/65535
  when they fit 0..65535;
* float images in [0, 1] are scaled by 255, float images in [0, 255] kept;
* anything else (negative values, floats beyond 255, 32-bit values beyond 65535) has no range we can know:
  refused by name (:class:`~sr2lora.core.errors.DataError`) with what to do.

Only regular files are opened: a FIFO, socket or device named ``x.png`` would block or read forever.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import DataError

WIDE_MODES = ("I", "F")


def not_regular(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file we may open ("a FIFO", "a directory", ...), or None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot stat it ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _bits(im: Image.Image) -> int | None:
    """Bits per sample of an integer image when the file says so (16-bit PNG; TIFF tag 258)."""
    if im.mode.startswith("I;16"):
        return 16
    if im.format == "PNG" and im.mode == "I":
        return 16
    tags = getattr(im, "tag_v2", None)
    if tags is not None:
        bits = tags.get(258)
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        if isinstance(bits, int) and 8 < bits <= 16:  # 32 bits is the container, not the range: see below
            return bits
    return None


def _wide_to_8bit(im: Image.Image, path: str) -> Image.Image:
    """An ``I``/``I;16``/``F`` image scaled to 8-bit grayscale ("L"), or DataError when its range is unknown."""
    a = np.asarray(im, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode == "F":
        if 0.0 <= lo and hi <= 1.0:
            scale = 255.0
        elif 0.0 <= lo and hi <= 255.0:
            scale = 1.0
        else:
            raise DataError(f"{path}: a float image with values in [{lo:.4g}, {hi:.4g}]; only [0, 1] or [0, 255] can "
                            f"be read as 8 bit. Convert it to an 8-bit image (or remove it)")
    else:
        bits = _bits(im)
        if lo < 0:
            raise DataError(f"{path}: a signed integer image (values down to {lo:.0f}); convert it to an 8-bit image "
                            f"(or remove it)")
        if bits is not None:
            scale = 255.0 / (2**bits - 1)
        elif hi <= 255:
            scale = 1.0
        elif hi <= 65535:
            scale = 255.0 / 65535
        else:
            raise DataError(f"{path}: a 32-bit integer image with values up to {hi:.0f} and no bit depth recorded; "
                            f"convert it to an 8-bit image (or remove it)")
    return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L")


def to_rgb8(im: Image.Image, path: str | Path = "image") -> Image.Image:
    """``im`` as 8-bit RGB; 16-bit and float images scaled (see the module docstring), not clipped."""
    if im.mode.startswith(WIDE_MODES):
        im = _wide_to_8bit(im, str(path))
    return im.convert("RGB")


def open_rgb8(path: str | Path) -> Image.Image:
    """Open a regular image file and return it decoded as 8-bit RGB (DataError for a FIFO, device, ...)."""
    why = not_regular(path)
    if why is not None:
        raise DataError(f"{path}: {why}, not an image file; remove it from the folder")
    with Image.open(path) as im:
        return to_rgb8(im, path)
