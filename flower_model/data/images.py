"""Decode and resize photos: the one implementation shared by preprocess, infer and the server.

Imports only numpy and Pillow, so the inference path stays light.

Memory is bounded by design, whatever the file says about its own size (docs/serving.md, Memory):
- decode: a file over `max_pixels` is refused before its pixels are read; one over
  DECODE_BUDGET_PIXELS (far above a camera photo) is decoded at a power-of-two fraction of its
  size (JPEG's DCT scaling through `draft`, else `reduce` right after the read);
- resize: a side longer than MAX_ASPECT_RATIO times the other is centre-cropped first, so
  the scaled copy stays within MAX_ASPECT_RATIO * size^2 pixels (a 1 x 20000 strip scaled to a
  224 px short side would otherwise be 224 x 4.48 million pixels).
Photos within both limits (every real photo of the data set) take the same steps as before.
"""

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flower_model.constants import ALPHA_BACKGROUND, RESIZE_MODES, UINT8_MAX

RGB = "RGB"
RESAMPLE = Image.Resampling.BICUBIC
# Modes deeper than 8 bits, which Pillow's convert("RGB") clips instead of scaling.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
INT32_MODE, FLOAT_MODE = "I", "F"
UINT16_MAX = 65535
INT32_MAX = 2**31 - 1
DECODE_BUDGET_PIXELS = 4096 * 4096  # 16.8 Mpx, 50 MB as RGB: larger files are decoded reduced
MAX_ASPECT_RATIO = 4  # crop mode keeps at most this long side : short side of the source
# Modes Image.reduce refuses, and the lossless mode each is reduced in instead.
REDUCIBLE_MODE = {"I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I", "1": "L", "P": "RGBA"}


class ImageDecodeError(Exception):
    """A file that cannot become an RGB array; `reason` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit int and float grayscale scaled (not clipped) to 8-bit "L".

    16-bit modes span 0..65535. Mode I (32-bit int) is how Pillow opens 16-bit PNGs, so values
    within 0..65535 are read as 16-bit, larger ones as the full int32 range. Float images in
    0..1 are scaled by 255; other float ranges are taken as 0..255 grey levels.
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode == FLOAT_MODE:
        unit_range = values.size > 0 and values.min() >= 0 and values.max() <= 1
        scale = float(UINT8_MAX) if unit_range else 1.0
    elif image.mode in SIXTEEN_BIT_MODES or values.max(initial=0) <= UINT16_MAX:
        scale = UINT8_MAX / UINT16_MAX
    else:
        scale = UINT8_MAX / INT32_MAX
    grey = np.clip(np.rint(values * scale), 0, UINT8_MAX).astype(np.uint8)
    return Image.fromarray(grey, "L")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in (*SIXTEEN_BIT_MODES, INT32_MODE, FLOAT_MODE):
        return _to_8bit(image).convert(RGB)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (UINT8_MAX,))
        return Image.alpha_composite(background, rgba).convert(RGB)
    return image.convert(RGB)  # L, CMYK, YCbCr, P without transparency


def _reduction(width: int, height: int) -> int:
    """The power-of-two factor that brings width x height within DECODE_BUDGET_PIXELS."""
    factor = 1
    while math.ceil(width / factor) * math.ceil(height / factor) > DECODE_BUDGET_PIXELS:
        factor *= 2
    return factor


def _read_within_budget(image: Image.Image) -> Image.Image:
    """The pixels, upright, at most DECODE_BUDGET_PIXELS of them (a larger file is reduced)."""
    factor = _reduction(image.width, image.height)
    if factor > 1 and image.format == "JPEG":  # scaled while decoding: never read at full size
        image.draft(image.mode, (math.ceil(image.width / factor), math.ceil(image.height / factor)))
    image.load()
    upright = ImageOps.exif_transpose(image)
    factor = _reduction(upright.width, upright.height)
    if factor > 1:
        upright = upright.convert(REDUCIBLE_MODE.get(upright.mode, upright.mode)).reduce(factor)
    return upright


def decode_image(source: Path | bytes, max_pixels: int) -> np.ndarray:
    """Read a file, or its bytes as sent to the server, as an upright RGB uint8 array [H, W, 3].

    Raises ImageDecodeError with a reason.
    """
    try:
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
    except OSError as error:
        raise ImageDecodeError("unreadable", str(error)) from None
    if size == 0:
        raise ImageDecodeError("empty", "file has zero bytes")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise ImageDecodeError(
                    "too_large",
                    f"{image.width}x{image.height} = {pixels} pixels > "
                    f"max_image_pixels={max_pixels}",
                )
            return np.asarray(_to_rgb(_read_within_budget(image)), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", "Pillow cannot identify the format") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("too_large", str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = "truncated" if "truncated" in str(error) else "corrupt"
        raise ImageDecodeError(reason, str(error)) from None


def resize_image(rgb: np.ndarray, size: int, mode: str, pad_value: int) -> np.ndarray:
    """Square `size` x `size` RGB array. crop: shorter side to size, center crop; pad: fit + pad.

    Crop mode first centre-crops a source longer than MAX_ASPECT_RATIO times its short side
    (what is cut lies outside the final crop anyway), so the scaled copy stays small.
    """
    image = Image.fromarray(rgb, RGB)
    width, height = image.size
    if mode == "crop":
        image = _cap_aspect_ratio(image)
        width, height = image.size
        scale = size / min(width, height)
        new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
        resized = image.resize(new_size, RESAMPLE)
        left = (new_size[0] - size) // 2
        top = (new_size[1] - size) // 2
        return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
    if mode == "pad":
        scale = size / max(width, height)
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = image.resize(new_size, RESAMPLE)
        canvas = Image.new(RGB, (size, size), (pad_value,) * 3)
        canvas.paste(resized, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
        return np.asarray(canvas, dtype=np.uint8)
    raise ValueError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")


def _cap_aspect_ratio(image: Image.Image) -> Image.Image:
    """The centre of `image` with its long side at most MAX_ASPECT_RATIO times its short side."""
    width, height = image.size
    longest = MAX_ASPECT_RATIO * min(width, height)
    if max(width, height) <= longest:
        return image  # every ordinary photo: unchanged
    left, top = (width - min(width, longest)) // 2, (height - min(height, longest)) // 2
    return image.crop((left, top, left + min(width, longest), top + min(height, longest)))


def load_image(
    source: Path | bytes, size: int, mode: str, pad_value: int, max_pixels: int
) -> np.ndarray:
    """decode_image + resize_image: exactly what the model saw in training."""
    return resize_image(decode_image(source, max_pixels), size, mode, pad_value)
