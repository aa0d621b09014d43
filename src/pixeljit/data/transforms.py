"""Pixel-level preparation of one image: colour mode, the ADM centre crop, CHW uint8.

Every source goes through the same two steps, in the authors' order (their ImageFolder loader
converts to RGB first, then `center_crop_arr` from ADM):
1. `to_channels`: any Pillow mode to 'RGB' or 'L'; transparency is composited on white.
2. `adm_center_crop`: halve with a box filter while the short side is at least twice the target,
   bicubic-resize so the short side equals the target, then cut the centre square.
Up-sampling (Fashion-MNIST 28 -> 32/64/128) is the same rule: it reduces to one bicubic resize.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pixeljit.values import is_integer

WHITE = (255, 255, 255, 255)
GREY = 1
COLOUR = 3
VALID_CHANNELS = (GREY, COLOUR)
CHANNEL_NAMES = {GREY: "grey", COLOUR: "RGB"}  # as messages and summaries say them
CROP_RULE = "ADM center_crop_arr (box-halve, bicubic, centre square); alpha over white"
_MODE_FOR_CHANNELS = {GREY: "L", COLOUR: "RGB"}
# Pillow modes that carry an alpha channel (premultiplied or not).
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Modes Pillow can convert straight to RGB / L without losing meaning.
_PLAIN_MODES = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_SIXTEEN_BIT_SHIFT = 8  # 16-bit grey keeps its top 8 bits
_SIXTEEN_BIT_MAX = 0xFFFF
_EIGHT_BIT_MAX = 0xFF
# formats whose mode 'I' is 16-bit grey (0..65535): PNG (Pillow before 10.x opened 16-bit grey
# PNG as 'I'; later ones as 'I;16') and PPM (16- and 12-bit PGM, scaled to 0..65535); an 'I' of
# any other (a 32-bit TIFF) or of no file is not known to be 16-bit, and is refused
SIXTEEN_BIT_I_FORMATS = frozenset({"PNG", "PPM"})
_OPAQUE = 255  # 8-bit alpha of an opaque pixel
MAX_SIZE = 8192  # output side in pixels (the paper trains at 256 and 512)
# Pixels an input image may declare (8192 x 8192; about 270 MB decoded as RGBA). Pillow's own
# bomb guard only refuses twice its MAX_IMAGE_PIXELS (~179 M pixels, ~700 MB); ours is lower and
# checked from the header, so a small file can never make a decoder allocate more than this.
MAX_IMAGE_PIXELS = 1 << 26


def check_channels(channels: int) -> int:
    """Validate a channel count (1 = grey, 3 = RGB); returned as an int."""
    if not is_integer(channels) or channels not in VALID_CHANNELS:  # 1.0 and True equal 1
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return int(channels)


def check_size(size: int, name: str = "size") -> int:
    """Validate a target resolution: an integer in [1, MAX_SIZE], returned as an int (NumPy's
    taken as its value); `name` heads the message."""
    if not is_integer(size) or not 1 <= size <= MAX_SIZE:
        raise ValueError(f"{name} must be an integer in [1, {MAX_SIZE}] (pixels), got {size!r}")
    return int(size)


def check_pixels(img: Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an image whose header declares more than `max_pixels` (before decoding it)."""
    width, height = img.size
    if width * height > max_pixels:
        raise ValueError(
            f"image of {width}x{height} = {width * height} pixels is over the limit of "
            f"{max_pixels} pixels (a decompression bomb, or far larger than any training image)"
        )


def _sixteen_bit_to_eight(img: Image.Image) -> Image.Image:
    """16-bit grey ('I;16*', or 'I' from a 16-bit PNG or PGM) -> 'L' of the top 8 bits, or 'LA'
    when a tRNS grey value marks transparent pixels (compared on all 16 bits, as PNG defines it).

    Pillow opens 16-bit PGM as 'I' and already scales a smaller maxval (a 12-bit PGM, maxval
    4095) up to 0..65535, so the top 8 bits are right for every bit depth it reads. ValueError
    for an image that has no such meaning: an 'I' holding values outside 0..65535, any other 'I'
    (a 32-bit integer TIFF, an in-memory array: its bits are not known to be 16), or 16-bit
    values all under 256 (8-bit values in a 16-bit file), which the top 8 bits would turn black.
    """
    arr = np.asarray(img)  # (H, W) uint16, or int32 for mode 'I'
    low, high = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if img.mode == "I":
        if low < 0 or high > _SIXTEEN_BIT_MAX:
            raise ValueError(
                f"unsupported image mode 'I' (32-bit integer) with values {low}..{high}, "
                f"outside the 16-bit range 0..{_SIXTEEN_BIT_MAX} (need an 8-bit or 16-bit image)"
            )
        if img.format not in SIXTEEN_BIT_I_FORMATS:
            source = f"a {img.format} file" if img.format else "an image of unknown bit depth"
            raise ValueError(
                f"unsupported image mode 'I' (32-bit integer grey, from {source}) with values "
                f"{low}..{high}: its bits per pixel have no 8-bit meaning (need an 8-bit or "
                "16-bit image)"
            )
    if 0 < high <= _EIGHT_BIT_MAX:
        raise ValueError(
            f"16-bit image whose values all lie in {low}..{high}: keeping its top 8 bits would "
            "make it all black (8-bit values saved in a 16-bit file?); need an 8-bit image, or "
            f"16-bit values over 0..{_SIXTEEN_BIT_MAX}"
        )
    grey = (arr.astype(np.uint32) >> _SIXTEEN_BIT_SHIFT).astype(np.uint8)
    hidden = img.info.get("transparency")
    if not isinstance(hidden, int):  # no tRNS (or an unusable one): opaque
        return Image.fromarray(grey, "L")
    alpha = np.where(arr == hidden, 0, _OPAQUE).astype(np.uint8)
    return Image.fromarray(np.stack([grey, alpha], axis=-1), "LA")


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert any supported Pillow image to mode 'L' (channels=1) or 'RGB' (channels=3).

    Alpha (RGBA, LA, PA, or a PNG tRNS colour in `img.info["transparency"]` for P, L, RGB and
    16-bit grey) is composited over opaque white, so transparent backgrounds become white rather
    than whatever colour hides under alpha = 0. 16-bit greyscale ('I;16*') keeps its top 8 bits;
    so does mode 'I' when `img.format` (the file it was opened from: keep the image Pillow
    opened, or pass the format on) is one whose 'I' is 16-bit, SIXTEEN_BIT_I_FORMATS (16-bit
    PNG, 16- and 12-bit PGM). Raises ValueError for images with no 8-bit meaning: any other 'I'
    (a 32-bit integer TIFF), float 'F', 16-bit values all under 256 (they would be black): the
    caller reports the file.
    """
    target = _MODE_FOR_CHANNELS[check_channels(channels)]
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        img = _sixteen_bit_to_eight(img)
        mode = img.mode
    if mode in _ALPHA_MODES or "transparency" in img.info:
        if mode not in _ALPHA_MODES and mode not in _PLAIN_MODES:
            raise ValueError(f"unsupported image mode {mode!r} (need an 8-bit or 16-bit image)")
        rgba = img.convert("RGBA")  # honours tRNS (info["transparency"]) for P, L and RGB
        base = Image.new("RGBA", rgba.size, WHITE)
        img = Image.alpha_composite(base, rgba)
    elif mode not in _PLAIN_MODES:
        raise ValueError(f"unsupported image mode {mode!r} (need an 8-bit or 16-bit image)")
    return img if img.mode == target else img.convert(target)


def adm_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop: box-halve while short side >= 2*size, bicubic to short side = size,
    centre square. Returns (size, size) for 'L' or (size, size, 3) for 'RGB', uint8."""
    check_size(size)
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(side // 2 for side in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    resized = tuple(round(side * scale) for side in img.size)
    if resized[0] * resized[1] > MAX_IMAGE_PIXELS:  # a sliver: 1 x 70,000 -> 64 x 4.5 M
        raise ValueError(
            f"image of {img.size[0]}x{img.size[1]} would be resized to {resized[0]}x{resized[1]}, "
            f"before the centre crop, over the limit of {MAX_IMAGE_PIXELS:,} pixels: pack at a "
            "smaller size, or crop the image nearer to a square"
        )
    img = img.resize(resized, resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def image_to_chw(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Mode conversion + ADM crop, as a (C, size, size) uint8 array."""
    arr = adm_center_crop(to_channels(img, channels), size)
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (S, S, 1)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (C, S, S)


def resize_stack(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Apply `image_to_chw` to a (N, C0, H, W) uint8 stack (C0 in {1, 3}) -> (N, C, S, S).

    A stack already at the target size and channel count is returned as is (no resampling).
    """
    if images.ndim != 4 or images.shape[1] not in VALID_CHANNELS or images.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 (N, 1|3, H, W) stack, got {images.dtype} {images.shape}"
        )
    n, c0, h, w = images.shape
    if (h, w) == (size, size) and c0 == channels:
        return images
    if (h, w) == (size, size) and c0 == GREY and channels == COLOUR:
        return np.repeat(images, COLOUR, axis=1)
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    for i in range(n):
        hwc = images[i, 0] if c0 == GREY else images[i].transpose(1, 2, 0)  # (H, W[, 3])
        out[i] = image_to_chw(Image.fromarray(np.ascontiguousarray(hwc)), size, channels)
    return out
