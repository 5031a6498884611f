"""A prediction request's JSON body -> the uint8 (784,) MNIST image it asks about.

Two forms: ``{"image": "data:image/png;base64,..."}`` (what a canvas's
``toDataURL()`` gives) goes through exactly the preprocessing of
``predict --image`` (``fastnn.images``); ``{"pixels": [784 numbers 0-255]}`` is
a 28x28 image already in MNIST form (white ink on black, row by row), used
as it is. Anything else raises BadRequest with the HTTP status to answer.
"""

from __future__ import annotations

import base64
import binascii
import io
import json

import numpy as np

from fastnn import images

N_PIXELS = images.SIDE * images.SIDE
# A drawing is a few hundred pixels on a side; this bounds the memory a
# request can make Pillow and to_mnist use (float64 copies of the image).
MAX_IMAGE_PIXELS = 1024 * 1024
IMAGE_TYPES = ("image/png", "image/jpeg")
USAGE = 'send {"image": "data:image/png;base64,..."} or {"pixels": [784 numbers 0-255]}'


class BadRequest(Exception):
    """A request the server refuses: ``status`` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def request_pixels(body: bytes) -> np.ndarray:
    """The JSON body of POST /api/predict -> uint8 (784,)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise BadRequest(400, f"the body is not valid JSON ({e}); {USAGE}") from None
    if not isinstance(obj, dict):
        raise BadRequest(400, f"the body must be a JSON object; {USAGE}")
    given = [key for key in ("image", "pixels") if key in obj]
    if len(given) != 1:
        raise BadRequest(400, f"give exactly one of image and pixels; {USAGE}")
    return image_pixels(obj["image"]) if given == ["image"] else pixel_list(obj["pixels"])


def pixel_list(values) -> np.ndarray:
    """784 numbers 0-255 (bools and strings refused) -> uint8 (784,), rounded."""
    if not isinstance(values, list) or len(values) != N_PIXELS:
        got = f"a list of {len(values)}" if isinstance(values, list) else type(values).__name__
        raise BadRequest(400, f"pixels must be a list of {N_PIXELS} numbers (28x28, row by "
                              f"row), got {got}")
    for i, v in enumerate(values):
        # type() rather than isinstance: JSON true/false arrive as bool, an int subclass
        if type(v) not in (int, float) or not 0 <= v <= 255:  # NaN fails the comparison
            raise BadRequest(400, f"pixels[{i}] is {json.dumps(v)[:40]}: every pixel must be "
                                  "a number from 0 to 255")
    return np.rint(np.array(values, dtype=np.float64)).astype(np.uint8)


def image_pixels(url) -> np.ndarray:
    """A base64 data URL of a PNG or JPEG -> uint8 (784,), as ``predict --image`` reads a file."""
    if not isinstance(url, str):
        raise BadRequest(400, f"image must be a data URL string, got {type(url).__name__}")
    head, comma, payload = url.partition(",")
    if not (head.startswith("data:") and head.endswith(";base64") and comma):
        raise BadRequest(400, "image must be a base64 data URL "
                              "(data:image/png;base64,...), as canvas.toDataURL() gives")
    kind = head[len("data:"):].split(";")[0].lower()
    if kind not in IMAGE_TYPES:
        raise BadRequest(415, f"image is {kind or 'of no type'}; send a PNG or JPEG "
                              "(data:image/png;base64,...)")
    try:
        raw = base64.b64decode(payload, validate=True)
    except binascii.Error as e:
        raise BadRequest(400, f"image: not valid base64 ({e})") from None
    return _to_mnist(_decode(raw))


def _decode(raw: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> float (h, w) luminance, refusing big images before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"]) as img:
            # open() has read only the header: check the size before any pixel is decoded
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise BadRequest(413, f"image is {w}x{h} pixels; at most {MAX_IMAGE_PIXELS:,} "
                                      "pixels (e.g. 1024x1024) are accepted")
            return images.grayscale(img)
    except BadRequest:
        raise
    except UnidentifiedImageError:
        raise BadRequest(400, "image: the data is not a PNG or JPEG image") from None
    except Image.DecompressionBombError as e:  # open() refuses absurd sizes itself
        raise BadRequest(413, f"image: too large ({e})") from None
    except Exception as e:  # noqa: BLE001
        # Pillow's decoders report damaged data as OSError, SyntaxError,
        # ValueError, zlib.error, struct.error, ...: all mean the same here.
        raise BadRequest(400, f"image: corrupt or truncated ({type(e).__name__}: {e})") from None


def _to_mnist(gray) -> np.ndarray:
    try:
        return images.to_mnist(gray)
    except ValueError as e:  # a blank drawing
        raise BadRequest(422, f"image: {e}") from None
