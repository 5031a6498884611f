"""Turn an ordinary picture of a digit (PNG, JPEG, ...) into an MNIST-style input.

MNIST digits are white ink on black, cropped to the ink, scaled so the longer
side is 20 px (aspect kept) and placed in a 28x28 field with the centre of mass
at the centre. Fashion-MNIST's garments are light on black too, but trimmed to
the garment, scaled so the longer side is 28 px and centred by their bounding
box (Xiao, Rasul and Vollgraf 2017). ``to_mnist`` repeats those steps for any
grayscale array and ``load_image`` reads a file with Pillow and calls it. Both
return uint8 (784,), ready for ``fastnn.kernels.numpy_ref.to_float``.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from fastnn import files

SIDE = 28  # the MNIST field
BOX = 20  # the longer side of the digit inside it
CENTRE = 14.0  # MNIST's mean centre of mass, in row/column index units
INK_THRESHOLD = 0.08  # pixels above this fraction of the darkest ink count for the bounding box
# Reading bounds. A PNG's header may declare 10000x10000 pixels in a 139 KB file: the
# pixel count is checked before anything is decoded, and a large picture is reduced to
# at most WORK_SIDE px (JPEG while decoding, others right after) before any float copy
# is made. A digit ends up 20 px tall, so nothing of it is lost.
MAX_PIXELS = 50_000_000  # a 50-megapixel photo
MAX_FILE_BYTES = 256 * 2**20
WORK_SIDE = 512


class ImageError(Exception):
    """A file that cannot be read as a picture of a digit; the message names the file."""


REMEDY = ("pass a picture (PNG, JPEG, ...) of one digit, or of one garment for a "
          "Fashion-MNIST model")


def load_image(path, fashion=False) -> np.ndarray:
    """Read an image file and return it in MNIST form (``fashion``: Fashion-MNIST's):
    uint8 (784,)."""
    from PIL import Image, UnidentifiedImageError

    name = os.fspath(path)
    try:
        f = files.open_regular(name, MAX_FILE_BYTES, "an image file")
    except files.FileError as e:
        raise ImageError(f"{name}: {e.problem}; {e.remedy_or(REMEDY)}") from None
    try:
        with f, warnings.catch_warnings():
            # Pillow warns about (and above twice its limit refuses) large images on
            # open; MAX_PIXELS below is the limit that counts, with its own message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(_too_large(name, f"{width}x{height} pixels"))
                img.draft(None, (WORK_SIDE, WORK_SIDE))  # JPEG: decode at a reduced scale
                gray = grayscale(img)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read; {REMEDY}") from None
    except Image.DecompressionBombError:
        raise ImageError(_too_large(name, "more pixels than Pillow opens")) from None
    except ImageError:
        raise
    except Exception as e:
        # Pillow's decoders meet arbitrary bytes here and fail in many ways (OSError,
        # ValueError, SyntaxError, struct.error, ...): each is a damaged file to the user.
        raise ImageError(f"{name}: cannot read the image ({type(e).__name__}: {e}); "
                         f"{REMEDY}") from None
    try:
        return to_mnist(gray, fashion)
    except ValueError as e:
        raise ImageError(f"{name}: {e}") from None


def _too_large(name, size):
    return (f"{name}: {size}, more than the {MAX_PIXELS // 1_000_000} megapixels fastnn reads; "
            "scale or crop it to the digit (a few hundred pixels a side is plenty)")


def _reduced(img):
    """img with its longer side cut to at most WORK_SIDE px by a box filter (Image.reduce),
    in a mode that keeps its depth: 16-bit grayscale becomes 32-bit "I", palette and
    bilevel images become L or RGBA (reduce handles neither)."""
    if img.mode.startswith("I;16"):
        img = img.convert("I")
    elif img.mode in ("P", "PA", "1"):
        transparent = img.mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if transparent else "L")
    factor = math.ceil(max(img.size) / WORK_SIDE)
    return img.reduce(factor) if factor > 1 else img


def grayscale(img) -> np.ndarray:
    """Open Pillow image (its size already checked) -> float (h, w) luminance in [0, 255],
    what to_mnist takes.

    Honours a photo's rotation flag, reduces a large picture (``_reduced``) and makes
    transparent parts paper. High-depth images ("I": 32-bit integers, "F": floats) are
    scaled to 0..255, not clipped (a 16-bit scan is mostly above 255): a 16-bit file by
    65535, others by the smallest of 1 (floats), 255 and 65535 that holds every value,
    else by the image's own range.
    """
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)  # phone photos: honour the rotation flag
    white = 65535.0 if img.mode.startswith("I;16") else None
    img = _reduced(img)
    if img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        a[~np.isfinite(a)] = 0.0  # "F" images may hold NaN or inf
        lo, hi = float(a.min()), float(a.max())
        if white is None and lo >= 0:
            white = next((w for w in ((1.0,) if img.mode == "F" else ()) + (255.0, 65535.0)
                          if hi <= w), None)
        if white is not None:
            return a * (255.0 / white)
        return (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
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


def to_mnist(gray, fashion=False) -> np.ndarray:
    """Grayscale (h, w) array (any numeric dtype, 0 = black, 255 = white) -> uint8 (784,).

    Steps: invert when the background (the border's median) is light; subtract
    the background level and stretch the ink to 0..255; crop to the ink's
    bounding box; scale the longer side to 20 px; paste into 28x28 so the centre
    of mass sits at the centre. ``fashion``: the longer side to 28 px, centred by
    the bounding box, and the background the border's median (a garment often
    reaches the border: a 28x28 Fashion-MNIST image comes back as it was, up to
    the stretch). Raises ValueError for an empty or blank image.
    """
    a = np.asarray(gray, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a 2-D grayscale image, got shape {a.shape}")
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if np.median(border) > 127.5:  # light paper, dark ink: MNIST is the other way round
        a, border = 255.0 - a, 255.0 - border
    # The border's 90th percentile is the paper's brightest noise: everything
    # up to it is background, even if the digit touches the edge here and there.
    ink = np.clip(a - np.percentile(border, 50 if fashion else 90), 0.0, None)
    peak = ink.max()
    if peak < 255.0 * INK_THRESHOLD:
        raise ValueError("no digit found: the image is blank (no ink stands out from the "
                         "background)")
    ink *= 255.0 / peak

    # a garment's faint edges are part of it (cut, the rest is scaled up to fill 28 px)
    inked = ink > (0.0 if fashion else 255.0 * INK_THRESHOLD)
    rows, cols = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    digit = _scale_longer_side(ink, SIDE if fashion else BOX)
    h, w = digit.shape
    if fashion:  # the bounding box in the middle
        top, left = (SIDE - h + 1) // 2, (SIDE - w + 1) // 2  # an odd margin: more above
    else:  # centre of mass -> CENTRE, keeping the whole digit inside the field
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
