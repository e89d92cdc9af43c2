"""Image files of every kind, decoded to RGB: what data.load_image and the image check open.

Off the reading path: read it when an image of yours is refused or looks wrong. JPEG, PNG, GIF, BMP, TIFF,
WebP and whatever else Pillow decodes; EXIF rotation applied; transparency, 16-bit grey and float images
brought to 8-bit RGB.

    python -c "import image_files; print(image_files.image_problem('missing.jpg'))"

Choices where the data sets' documents are silent:
- Transparent pixels are composited on white; 16-bit grey is scaled by 1/257; float images are clipped to
  0..255; an image over Image.MAX_IMAGE_PIXELS is refused.
- Any failure to decode is the image's own problem (`image_problem` names it), never an exception: Pillow
  raises OSError, SyntaxError, ValueError or NotImplementedError (DDS) as it pleases.
"""

import os

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
WHITE = (255, 255, 255)
IMAGE_PROBLEMS = ("", "missing image", "unknown image", "unreadable image", "truncated image", "image too large")


def to_rgb(image):
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit scaled to 8 bits."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float32) / 257.0           # 0..65535 -> 0..255
        image = Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def open_rgb(path, min_side=None):
    """Decode an image file to an RGB Pillow image, EXIF rotation applied; any failure to decode is a
    ValueError naming the file.

    With min_side, a JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8, libjpeg's DCT scaling)
    that keeps both sides >= min_side: much less work for a 224 or 384 crop of a large photo.
    """
    path = str(path)
    try:
        with Image.open(path) as image:
            if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                raise ValueError(f"{path}: image too large ({image.width}x{image.height} pixels, "
                                 f"limit {Image.MAX_IMAGE_PIXELS}; decompression bomb?)")
            if min_side and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path}: image too large ({error})") from None
    except ValueError as error:
        if str(error).startswith(path):
            raise
        raise ValueError(f"{path}: unreadable image ({error})") from None
    except Exception as error:  # Pillow raises what it likes: OSError, SyntaxError, NotImplementedError (DDS) ...
        raise ValueError(f"{path}: unreadable image ({type(error).__name__}: {error})") from None


def image_problem(path):
    """None for a usable image, else the reason: missing / unreadable / truncated / too large. Any failure
    to decode is the image's own problem, never an exception.

    A JPEG is decoded at 1/8 scale (every byte of the stream is still read, so truncation shows).
    """
    if not path:
        return "unknown image"
    if not os.path.isfile(path):
        return "missing image"
    try:
        with Image.open(path) as image:
            if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                return "image too large"
            if image.format == "JPEG":
                image.draft(image.mode, (1, 1))
            image.load()
    except Image.DecompressionBombError:
        return "image too large"
    except Exception as error:  # OSError, SyntaxError, ValueError, NotImplementedError (DDS), ...
        return "truncated image" if "truncated" in str(error) else "unreadable image"
    return None
