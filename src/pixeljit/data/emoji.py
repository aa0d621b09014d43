"""Noto Color Emoji (OFL) as an unconditional colour image set.

The font's CBDT table stores one PNG bitmap per glyph (3,926 RGBA images of 136x128 in the
Debian package `fonts-noto-color-emoji`). We read them with fontTools, decode with Pillow,
composite on white, and apply the same ADM crop as every other source. Order is the font's
glyph order, so a given font file always gives the same set.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .fingerprint import FINGERPRINT_KEY, paths_fingerprint
from .source import BadImage, BadImageError, SourceStream, batch_images
from .transforms import COLOUR, CROP_RULE, check_channels, check_pixels, check_size, image_to_chw

FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"),
    Path("/usr/share/fonts/noto/NotoColorEmoji.ttf"),
    Path("/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf"),
)
INSTALL_HINT = (
    "on Debian/Ubuntu run `sudo apt-get install fonts-noto-color-emoji`; elsewhere download "
    "NotoColorEmoji.ttf from https://github.com/googlefonts/noto-emoji and pass font_path=FILE "
    "(CLI: --font FILE)"
)
CLASS_NAME = "emoji"
_BATCH = 256
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


def find_emoji_font(font_path: str | os.PathLike | None = None) -> Path:
    """The Noto Color Emoji font file, or FileNotFoundError with install instructions."""
    if font_path is not None and Path(font_path).is_dir():
        raise ValueError(f"--font {font_path} is a folder: pass the font file (NotoColorEmoji.ttf)")
    candidates = [Path(font_path)] if font_path is not None else list(FONT_CANDIDATES)
    for path in candidates:
        if path.is_file():
            return path
    where = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"Noto Color Emoji font not found (looked at {where}): {INSTALL_HINT}")


def iter_emoji_pngs(font_path: str | os.PathLike | None = None) -> Iterator[tuple[str, bytes]]:
    """(glyph name, PNG bytes) of every bitmap in the largest CBDT strike, in glyph order."""
    from fontTools.ttLib import TTFont, TTLibError

    path = find_emoji_font(font_path)
    try:
        font = TTFont(path, lazy=True)
        if "CBDT" not in font:
            raise ValueError(f"{path} has no CBDT table: not a bitmap colour-emoji font")
        strikes = font["CBDT"].strikeData
        ppems = [s.bitmapSizeTable.ppemY for s in font["CBLC"].strikes]
    except TTLibError as err:
        raise ValueError(f"{path}: cannot read the font ({err})") from err
    strike = strikes[int(np.argmax(ppems))]
    for name in sorted(strike, key=font.getGlyphID):
        glyph = strike[name]
        glyph.ensureDecompiled()
        yield name, glyph.imageData


def emoji_stream(
    size: int,
    channels: int = COLOUR,
    font_path: str | os.PathLike | None = None,
    limit: int | None = None,
    skip_bad: bool = False,
) -> SourceStream:
    """The emoji set at `size` x `size`, for `prepare` (one class, label 0)."""
    check_size(size)
    check_channels(channels)
    path = find_emoji_font(font_path)
    skipped: list[BadImage] = []

    per_batch = batch_images(_BATCH, channels, size)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pending: list[np.ndarray] = []
        for count, (name, png) in enumerate(iter_emoji_pngs(path)):
            if limit is not None and count >= limit:
                break
            try:
                with Image.open(io.BytesIO(png)) as img:
                    check_pixels(img)
                    img.load()
                    pending.append(image_to_chw(img, size, channels))  # (C, S, S)
            except _DECODE_ERRORS as err:
                bad = BadImage(f"{path}#{name}", f"{type(err).__name__}: {err}")
                if not skip_bad:
                    raise BadImageError(bad) from err
                skipped.append(bad)
            if len(pending) == per_batch:
                yield np.stack(pending), np.zeros(len(pending), dtype=np.int64)
                pending = []
        if pending:
            yield np.stack(pending), np.zeros(len(pending), dtype=np.int64)

    description = {
        "kind": "emoji",
        "font": str(path),
        "license": "SIL Open Font License 1.1",
        "crop": CROP_RULE,
        FINGERPRINT_KEY: paths_fingerprint([path]),
    }
    return SourceStream([CLASS_NAME], False, description, batches(), limit, skipped)


def load_emoji(
    size: int,
    channels: int = COLOUR,
    font_path: str | os.PathLike | None = None,
    limit: int | None = None,
) -> np.ndarray:
    """All (or the first `limit`) emoji as one (N, C, size, size) uint8 array, in memory."""
    stream = emoji_stream(size, channels, font_path, limit)
    parts = [images for images, _ in stream.batches]
    if not parts:
        raise ValueError(f"no emoji bitmaps found in {stream.description['font']}")
    return np.concatenate(parts)
