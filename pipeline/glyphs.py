"""Text beyond ASCII on the overlay: prompts like "pince à biopsie" or "Nadelhalter für
Mikrochirurgie" must read as typed, not with "?" where OpenCV's Hershey fonts have no glyph.

ASCII text keeps cv2.putText (what the overlay always drew, and cheapest). Other text is
rasterised once with FreeType (Pillow) in DejaVu Sans Bold, the font matplotlib ships inside
its wheel (so nothing is looked up on the host), sized to the Hershey text beside it, and the
coverage mask is cached: a legend's prompts change when the user types, not per frame, so a
frame pays one alpha blend of a small box per label. DejaVu covers Latin, Greek and Cyrillic;
a character it lacks (CJK, say) shows as its empty box, never as another character.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

RGB = tuple[int, int, int]
# DejaVu Sans's cap height is 0.73 em: the pixel size that gives a Hershey text's cap height.
_CAP_HEIGHT_EM = 0.73


@lru_cache(maxsize=1)
def _font_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"


@lru_cache(maxsize=16)
def _font(px: int):  # -> PIL.ImageFont.FreeTypeFont
    from PIL import ImageFont

    return ImageFont.truetype(str(_font_path()), px)


@lru_cache(maxsize=128)  # prompts, a status line or two: a bounded set, however long it runs
def rasterise(text: str, cap_height: int) -> tuple[np.ndarray, int, int]:
    """(coverage mask uint8 [h, w], left, top): `text` drawn with its baseline's start at
    (0, 0) and capitals `cap_height` pixels tall; left/top place the mask against that
    origin (top is negative: above the baseline)."""
    from PIL import Image, ImageDraw

    font = _font(_pixel_size(cap_height))
    left, top, right, bottom = font.getbbox(text, anchor="ls")
    width, height = max(1, right - left), max(1, bottom - top)
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).text((-left, -top), text, fill=255, font=font, anchor="ls")
    return np.asarray(canvas), left, top


def width(text: str, cap_height: int) -> int:
    """Pixels `text` advances across as `draw` draws it. Laid out, not rasterised: a caption
    is word-wrapped by measuring it over and over (a character at a time at its end), and a
    200-character caption rasterised each time cost the render stage 270 ms a frame."""
    return round(_font(_pixel_size(cap_height)).getlength(text))


def _pixel_size(cap_height: int) -> int:
    return max(4, round(cap_height / _CAP_HEIGHT_EM))


def draw(img: np.ndarray, text: str, x: int, y: int, cap_height: int, color: RGB) -> None:
    """Blend `text` into `img` (H, W, 3 uint8) in place, baseline starting at (x, y) as for
    cv2.putText; clipped to the image."""
    inv_alpha, ink, left, top = _inked(text, cap_height, color)
    h, w = img.shape[:2]
    y0, x0 = y + top, x + left
    ya, yb = max(y0, 0), min(y0 + ink.shape[0], h)
    xa, xb = max(x0, 0), min(x0 + ink.shape[1], w)
    if ya >= yb or xa >= xb:
        return
    rows, cols = slice(ya - y0, yb - y0), slice(xa - x0, xb - x0)
    region = img[ya:yb, xa:xb]
    region[...] = (region * inv_alpha[rows, cols] + ink[rows, cols]) >> 8


@lru_cache(maxsize=128)
def _inked(text: str, cap_height: int, color: RGB) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The blend's per-frame-constant halves, as the overlay's kernel has them: 256 - a and
    color * a + 128 with a the coverage in 0..256, so a frame pays a multiply-add-shift."""
    mask, left, top = rasterise(text, cap_height)
    a = mask.astype(np.uint16)
    a += a >> 7  # 0..255 -> 0..256: full coverage replaces the pixel exactly
    ink = a[..., None] * np.asarray(color, np.uint16) + 128
    return (256 - a)[..., None], ink, left, top
