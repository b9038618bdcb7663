"""Pictures, by Pillow: every pixel of the first frame decoded, within a pixel count."""

from __future__ import annotations

from typing import IO, cast

from PIL import Image, UnidentifiedImageError

from lib.media.facts import Limits, Media, Mismatch, Source, Unreadable

TYPES = {"image/png": {"PNG"}, "image/jpeg": {"JPEG"}, "image/webp": {"WEBP"}, "image/gif": {"GIF"}}


def prepare() -> None:
    Image.init()  # every format plugin loaded


def check(declared: str, source: Source, known: bool, limits: Limits) -> Media:
    """The picture's size and codec (FFmpeg's name); `known`: its magic numbers say it is `declared`."""
    Image.MAX_IMAGE_PIXELS = limits.max_pixels  # Pillow refuses twice this in open(); once is refused below
    try:
        image = Image.open(cast(IO[bytes], source), formats=sorted({f for fs in TYPES.values() for f in fs}))
    except Image.DecompressionBombError:
        raise Unreadable(f"it is a picture of more than {limits.max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        if known:
            raise Unreadable("Pillow cannot read it as a picture") from None
        raise Mismatch(f"The bytes are no picture, so they are not {declared}.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's words for a damaged header
        raise Unreadable(f"its header does not read ({exc})") from None
    with image:
        if image.format not in TYPES[declared]:
            raise Mismatch(f"The bytes are {image.format}, not {declared}.")
        if image.width * image.height > limits.max_pixels:
            raise Unreadable(f"it is a picture of more than {limits.max_pixels:,} pixels")
        try:
            image.load()  # every pixel of the first frame decoded
        except (OSError, SyntaxError, ValueError) as exc:
            raise Unreadable(f"its pixels do not decode ({exc})") from None
        animated = bool(getattr(image, "is_animated", False))
        codec = {"PNG": "apng" if animated else "png", "JPEG": "mjpeg", "WEBP": "webp", "GIF": "gif"}[image.format]
        return Media.sane(None, image.width, image.height, (codec,))
