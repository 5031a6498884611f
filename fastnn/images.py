"""Turn an ordinary picture of a digit (PNG, JPEG, ...) into an MNIST-style input.

MNIST digits are white ink on black, cropped to the ink, scaled so the longer
side is 20 px (aspect kept) and placed in a 28x28 field with the centre of mass
at the centre. ``to_mnist`` repeats those steps for any grayscale array,
``grayscale`` turns an open Pillow image into one, and ``load_image`` reads a
file with both (the demo server does the same with a drawing sent as PNG).
They return uint8 (784,), ready for ``fastnn.kernels.numpy_ref.to_float``.
"""

from __future__ import annotations

import os

import numpy as np

SIDE = 28  # the MNIST field
BOX = 20  # the longer side of the digit inside it
CENTRE = 14.0  # MNIST's mean centre of mass, in row/column index units
INK_THRESHOLD = 0.08  # pixels above this fraction of the darkest ink count for the bounding box


class ImageError(Exception):
    """A file that cannot be read as a picture of a digit; the message names the file."""


def load_image(path) -> np.ndarray:
    """Read an image file and return it in MNIST form: uint8 (784,)."""
    from PIL import Image, UnidentifiedImageError

    name = os.fspath(path)
    try:
        with Image.open(name) as img:
            gray = grayscale(img)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: cannot read the image ({e})") from None
    try:
        return to_mnist(gray)
    except ValueError as e:
        raise ImageError(f"{name}: {e}") from None


def grayscale(img) -> np.ndarray:
    """Open Pillow image -> float (h, w) luminance in [0, 255], what to_mnist takes.

    Decodes the pixels; honours a photo's rotation flag; transparent parts
    become paper.
    """
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)  # phone photos: honour the rotation flag
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        lum = np.asarray(rgba.convert("L"), dtype=np.float64)
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
        if alpha.min() < 1.0:
            # Ink drawn on a transparent sheet: put the sheet behind it in the
            # colour the ink is not, so dark strokes stay dark and light ones light.
            opaque = alpha > 0.5
            ink = lum[opaque].mean() if opaque.any() else 0.0
            sheet = 255.0 if ink < 128 else 0.0
            return alpha * lum + (1.0 - alpha) * sheet
        return lum
    return np.asarray(img.convert("L"), dtype=np.float64)


def to_mnist(gray) -> np.ndarray:
    """Grayscale (h, w) array (any numeric dtype, 0 = black, 255 = white) -> uint8 (784,).

    Steps: invert when the background (the border's median) is light; subtract
    the background level and stretch the ink to 0..255; crop to the ink's
    bounding box; scale the longer side to 20 px; paste into 28x28 so the centre
    of mass sits at the centre. Raises ValueError for an empty or blank image.
    """
    a = np.asarray(gray, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a 2-D grayscale image, got shape {a.shape}")
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if np.median(border) > 127.5:  # light paper, dark ink: MNIST is the other way round
        a, border = 255.0 - a, 255.0 - border
    # The border's 90th percentile is the paper's brightest noise: everything
    # up to it is background, even if the digit touches the edge here and there.
    ink = np.clip(a - np.percentile(border, 90), 0.0, None)
    peak = ink.max()
    if peak < 255.0 * INK_THRESHOLD:
        raise ValueError("no digit found: the image is blank (no ink stands out from the "
                         "background)")
    ink *= 255.0 / peak

    rows = np.flatnonzero((ink > 255.0 * INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > 255.0 * INK_THRESHOLD).any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    digit = _scale_longer_side(ink, BOX)

    # Centre of mass -> CENTRE, keeping the whole digit inside the field.
    h, w = digit.shape
    mass = digit.sum()
    com_r = (digit.sum(axis=1) @ np.arange(h)) / mass
    com_c = (digit.sum(axis=0) @ np.arange(w)) / mass
    top = int(np.clip(round(CENTRE - com_r), 0, SIDE - h))
    left = int(np.clip(round(CENTRE - com_c), 0, SIDE - w))
    field = np.zeros((SIDE, SIDE))
    field[top : top + h, left : left + w] = digit
    return np.clip(np.rint(field), 0, 255).astype(np.uint8).reshape(SIDE * SIDE)


def _scale_longer_side(ink, side):
    """Resample a float image so its longer side is ``side`` px, aspect kept (Lanczos)."""
    from PIL import Image

    h, w = ink.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow wants (w, h)
    img = Image.fromarray(ink.astype(np.float32))  # mode "F"
    out = np.asarray(img.resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    return np.clip(out, 0.0, 255.0)
