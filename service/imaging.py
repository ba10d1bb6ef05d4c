"""Image decoding and preprocessing: any image Pillow reads becomes the model's uint8 RGB input.

Training (`training.data`) uses the same function for folders of images, so a picture is prepared the same
way whether it is trained on or served.
"""

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import EmptyFile, ImageTooLarge, InvalidImage

RESAMPLING_FILTER = Image.Resampling.BICUBIC
"""Pillow's bicubic filter; Pillow widens it when shrinking, so downscaling is antialiased."""

ALPHA_BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited over white before the alpha channel is dropped."""

# Every caller passes its own `max_pixels`, checked right after the header is read; Pillow's process-wide
# limit would otherwise refuse large images first, with a message that hides the configured limit.
Image.MAX_IMAGE_PIXELS = None

_HIGH_BIT_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def decode_image(data: bytes, *, filename: str, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Decode `data` into a `size` = (height, width) RGB uint8 array, or raise a client error naming `filename`."""
    if not data:
        raise EmptyFile(f"{filename!r} is empty (0 bytes)")
    height, width = size
    try:
        image = Image.open(io.BytesIO(data))
        pixels = image.width * image.height
        if pixels > max_pixels:
            raise ImageTooLarge(
                f"{filename!r} is {image.width}x{image.height} = {pixels} pixels; the limit is {max_pixels}"
            )
        # JPEG only: decode at a reduced scale that is still at least the target size (much faster for photos).
        image.draft("RGB", (max(size), max(size)))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy for the usual image without rotation
        rgb = _to_rgb(image)
    except ImageTooLarge:
        raise
    except UnidentifiedImageError as error:
        raise InvalidImage(f"{filename!r} is not an image format this service can decode") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow reports truncated or corrupt data (bad CRC, short reads, bad headers) with these.
        raise InvalidImage(f"{filename!r} could not be decoded: {error}") from error
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), RESAMPLING_FILTER)
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: high bit depths scaled down, transparency composited over white."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image).astype(np.int64)
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        grey = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    has_alpha = image.mode in {"RGBA", "LA", "PA", "La", "RGBa"} or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image
