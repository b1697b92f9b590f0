"""Draw the segmentation over the video at display resolution.

The segment stage infers on a small label map (e.g. 256x320, possibly of a crop of the
endoscope's field of view) while the display runs at 1080p30 on a small CPU, so everything
per-pixel at display resolution happens in one fused numba kernel (`_blend_kernel`): the
nearest-neighbour upsampling of the label map (index arithmetic, no full-size label map),
the palette lookup, the alpha blend and the outlines, in a single pass over the frame with
rows split across threads. Text (legend, caption, status) is drawn with cv2.putText, or,
where it goes beyond ASCII (a typed prompt "pince à biopsie"), from a cached FreeType
raster (pipeline/glyphs.py); text boxes are darkened on their own sub-rectangles only.

Conventions:

- Images are (H, W, 3) uint8 RGB; colours are RGB.
- Label maps are 2-D integer class ids; class 0 is background and never drawn.
- Label ids >= the number of colours (K) are treated as background: not drawn, not
  outlined, not listed in the legend (a model with more classes than the palette, or a
  corrupt map, must not crash the display).
- The blend is integer: alpha is quantised to a = round(alpha * 256) and a drawn pixel is
  ``(image * (256 - a) + color * a + 128) >> 8``, within one grey level of the float blend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numba
import numpy as np
from numba import njit, prange

from orstream.pipeline import glyphs

Region = tuple[int, int, int, int]  # (y0, x0, h, w) in image pixels
RGB = tuple[int, int, int]

WHITE: RGB = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


# --------------------------------------------------------------------------- kernels


@njit(parallel=True, cache=True, fastmath=False)
def _blend_kernel(image, labels, edges, drawn, premul, inv_alpha, outline_rgb,
                  y0, x0, rh, rw, copy, out):  # pragma: no cover - compiled
    """Upsample `labels` onto the rectangle (y0, x0, rh, rw) of `image`, colourise, blend.

    drawn[c] (256,) says whether class id c is drawn; premul[c] (256, 3) int32 holds
    color * a + 128; inv_alpha is 256 - a. Where edges (same shape as labels) is set on a
    drawn pixel, the outline colour is written opaque. copy: copy the untouched pixels from
    image to out (False when out is image).

    Image column x shows label column (x - x0) * lw // rw, so label column lx covers the
    run of image columns [x0 + ceil(lx * rw / lw), x0 + ceil((lx + 1) * rw / lw)); the
    kernel walks those runs (one class lookup per run, not per pixel) over flat RGB rows.
    """
    h, w = image.shape[0], image.shape[1]
    lh, lw = labels.shape[0], labels.shape[1]
    ya, yb = max(y0, 0), min(y0 + rh, h)
    xa, xb = max(x0, 0), min(x0 + rw, w)
    xs = np.empty(lw + 1, np.int64)  # first image column of each label column, clipped
    for lx in range(lw + 1):
        xs[lx] = min(max(x0 + (lx * rw + lw - 1) // lw, xa), xb)
    img_rows = image.reshape(h, w * 3)
    out_rows = out.reshape(h, w * 3)
    o0, o1, o2 = outline_rgb[0], outline_rgb[1], outline_rgb[2]
    for y in prange(h):
        src = img_rows[y]
        dst = out_rows[y]
        if copy:
            for j in range(w * 3):
                dst[j] = src[j]
        if y < ya or y >= yb:
            continue
        ly = (y - y0) * lh // rh
        lrow = labels[ly]
        erow = edges[ly]
        for lx in range(lw):
            c = lrow[lx]
            if not drawn[c]:
                continue
            a, b = xs[lx] * 3, xs[lx + 1] * 3
            if erow[lx]:
                for j in range(a, b, 3):
                    dst[j] = o0
                    dst[j + 1] = o1
                    dst[j + 2] = o2
            else:
                p0, p1, p2 = premul[c, 0], premul[c, 1], premul[c, 2]
                for j in range(a, b, 3):
                    dst[j] = (src[j] * inv_alpha + p0) >> 8
                    dst[j + 1] = (src[j + 1] * inv_alpha + p1) >> 8
                    dst[j + 2] = (src[j + 2] * inv_alpha + p2) >> 8
    return out


@njit(cache=True, fastmath=False)
def _outlines_kernel(labels, num_classes, edges, counts):  # pragma: no cover - compiled
    """Outline mask (into edges) and per-class pixel counts (into counts, ids < num_classes).

    A pixel is on the outline when it is foreground (id != 0) and one of its 4-neighbours
    inside the map has a different id; the map's border is not an outline by itself.
    """
    lh, lw = labels.shape[0], labels.shape[1]
    for y in range(lh):
        for x in range(lw):
            c = labels[y, x]
            if c < num_classes:
                counts[c] += 1
            e = 0
            if c != 0 and (
                (y > 0 and labels[y - 1, x] != c)
                or (y + 1 < lh and labels[y + 1, x] != c)
                or (x > 0 and labels[y, x - 1] != c)
                or (x + 1 < lw and labels[y, x + 1] != c)
            ):
                e = 1
            edges[y, x] = e


# --------------------------------------------------------------------------- helpers


def _as_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """C-contiguous uint8 label map; ids outside [0, 255] (other dtypes) become background."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (h, w), got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be integer class ids, got {labels.dtype}")
        labels = np.where((labels < 0) | (labels >= num_classes), 0, labels).astype(np.uint8)
    return np.ascontiguousarray(labels)


def _as_image(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


def _as_colors(colors: np.ndarray | Sequence[RGB]) -> np.ndarray:
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[1] != 3 or not 1 <= colors.shape[0] <= 256:
        raise ValueError(f"colors must be (K, 3) with 1 <= K <= 256, got {colors.shape}")
    return np.clip(colors, 0, 255).astype(np.uint8)


def _tables(colors: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(drawn (256,) uint8, premul (256, 3) int32, inv_alpha) for the kernel."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = round(alpha * 256)
    k = colors.shape[0]
    drawn = np.zeros(256, np.uint8)
    drawn[1:k] = 1
    premul = np.zeros((256, 3), np.int32)
    premul[:k] = colors.astype(np.int32) * a + 128
    return drawn, premul, 256 - a


def _check_region(region: Region | None, shape: tuple[int, ...]) -> Region:
    if region is None:
        return 0, 0, shape[0], shape[1]
    y0, x0, rh, rw = (int(v) for v in region)
    if rh <= 0 or rw <= 0:
        raise ValueError(f"region (y0, x0, h, w) needs h, w > 0, got {region}")
    return y0, x0, rh, rw


def _prepare_out(image: np.ndarray, out: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """(out, copy): copy is False when out is image itself (in-place)."""
    if out is None:
        return np.empty_like(image), True
    if out.shape != image.shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous uint8 array shaped like image")
    if out.ctypes.data == image.ctypes.data:
        return out, False
    if np.may_share_memory(out, image):
        raise ValueError("out overlaps image without being image itself")
    return out, True


def _blend(image: np.ndarray, labels: np.ndarray, edges: np.ndarray, colors: np.ndarray,
           alpha: float, region: Region | None, outline_color: RGB,
           out: np.ndarray | None) -> np.ndarray:
    y0, x0, rh, rw = _check_region(region, image.shape)
    out, copy = _prepare_out(image, out)
    drawn, premul, inv_alpha = _tables(colors, alpha)
    outline_rgb = np.asarray(outline_color, np.int64).clip(0, 255)
    return _blend_kernel(image, labels, edges, drawn, premul, inv_alpha, outline_rgb,
                         y0, x0, rh, rw, copy, out)


# --------------------------------------------------------------------------- public API


def outlines(labels: np.ndarray) -> np.ndarray:
    """uint8 mask (h, w): 1 where a foreground pixel has a 4-neighbour of a different class.

    Neighbours outside the map do not count (an instrument cut by the frame's edge gets no
    outline along that edge).
    """
    labels = _as_labels(labels, 256)
    edges = np.empty(labels.shape, np.uint8)
    _outlines_kernel(labels, 256, edges, np.zeros(256, np.int64))
    return edges


def blend_labels(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float,
                 out: np.ndarray | None = None, *, region: Region | None = None,
                 outline: bool = False, outline_color: RGB = WHITE) -> np.ndarray:
    """Blend the class colours of `labels` over `image`, in one pass at image resolution.

    image: (H, W, 3) uint8 RGB. labels: (h, w) class ids covering the whole image, or only
    `region` = (y0, x0, h, w) of it, at that size or smaller (nearest-neighbour upsampled:
    label row of image row y is (y - y0) * lh // h, likewise for columns). colors: (K, 3)
    uint8. Class 0 and ids >= K are background: those pixels, and all pixels outside the
    region, are copied unchanged; the others become image * (1 - alpha) + color * alpha
    (integer, alpha quantised to /256). The region may extend past the image; only its
    part inside is drawn. With outline=True the label-resolution `outlines` mask is drawn,
    upsampled, opaque in `outline_color`. out: destination (allocated if None); may be
    `image` itself for in-place drawing. Returns out.
    """
    image = _as_image(image)
    colors = _as_colors(colors)
    labels = _as_labels(labels, colors.shape[0])
    edges = outlines(labels) if outline else np.zeros(labels.shape, np.uint8)
    return _blend(image, labels, edges, colors, alpha, region, outline_color, out)


@dataclass(frozen=True)
class OverlayStyle:
    alpha: float = 0.45
    outline: bool = True
    legend: bool = True
    font_scale: float | None = None  # None: scale with the image height (0.8 at 1080 rows)
    outline_color: RGB = WHITE


class OverlayRenderer:
    """Blend + outlines + legend of present classes + caption + status line, per frame."""

    BOX_SHADE = 0.35  # a text box keeps this fraction of the brightness under it

    def __init__(self, class_names: Sequence[str], colors: Sequence[RGB],
                 style: OverlayStyle | None = None, num_threads: int | None = None) -> None:
        """num_threads: numba threads for the blend kernel (None: numba's default, all cores).

        On a CPU shared with other busy processes, 1 thread can have a much better median
        than 2: a parallel region waits for its slowest thread, and a preempted thread costs
        a scheduler time slice.
        """
        if len(class_names) != len(colors):
            raise ValueError(f"{len(class_names)} class names for {len(colors)} colours")
        self.class_names = tuple(class_names)
        self.colors = _as_colors(colors)
        self.style = style or OverlayStyle()
        self.num_threads = num_threads
        self.last_legend: list[str] = []  # names listed by the latest draw(), for tests/logs

    def set_classes(self, class_names: Sequence[str], colors: Sequence[RGB]) -> None:
        """Draw with another class table from the next frame on (TP-SIS prompts changed)."""
        if len(class_names) != len(colors):
            raise ValueError(f"{len(class_names)} class names for {len(colors)} colours")
        self.class_names = tuple(class_names)
        self.colors = _as_colors(colors)

    def warmup(self) -> None:
        """Compile (or load from cache) the kernels on a tiny frame, with the live dtypes."""
        image = np.zeros((8, 8, 3), np.uint8)
        labels = np.zeros((4, 4), np.uint8)
        labels[1:3, 1:3] = 1
        self.draw(image, labels, caption="warmup", caption_age_s=0.0, status="warmup")
        self.draw(image, labels, region=(2, 2, 4, 4), out=image)
        self.last_legend = []

    # -- frame

    def draw(self, image: np.ndarray, labels: np.ndarray, region: Region | None = None,
             caption: str | None = None, caption_age_s: float | None = None,
             status: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Draw one frame; see `blend_labels` for image, labels, region and out."""
        style = self.style
        image = _as_image(image)
        k = self.colors.shape[0]
        labels = _as_labels(labels, k)
        edges = np.empty(labels.shape, np.uint8)
        counts = np.zeros(k, np.int64)
        _outlines_kernel(labels, k, edges, counts)
        if not style.outline:
            edges[:] = 0
        if self.num_threads is None:
            out = _blend(image, labels, edges, self.colors, style.alpha, region,
                         style.outline_color, out)
        else:
            previous = numba.get_num_threads()  # thread-local in numba: restore it for callers
            numba.set_num_threads(min(self.num_threads, numba.config.NUMBA_NUM_THREADS))
            try:
                out = _blend(image, labels, edges, self.colors, style.alpha, region,
                             style.outline_color, out)
            finally:
                numba.set_num_threads(previous)

        scale, thick = self._font(out)
        present = [c for c in range(1, k) if counts[c]]
        self.last_legend = [self.class_names[c] for c in present] if style.legend else []
        if self.last_legend:
            self._legend(out, present, scale, thick)
        self._texts(out, caption, caption_age_s, status, scale, thick)
        return out

    def annotate(self, image: np.ndarray, caption: str | None = None,
                 caption_age_s: float | None = None, status: str | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """The caption and status line of `draw`, without labels (segmentation off).

        Drawn on a copy of `image` unless `out` is given (`out=image` draws in place): the
        picture itself is shared with the frame's other consumers (publish parts, sinks).
        """
        image = _as_image(image)
        out, copy = _prepare_out(image, out)
        if copy:
            out[...] = image
        self.last_legend = []
        self._texts(out, caption, caption_age_s, status, *self._font(out))
        return out

    # -- text

    def _font(self, img: np.ndarray) -> tuple[float, int]:
        scale = self.style.font_scale or max(img.shape[0] / 1080 * 0.8, 0.3)
        return scale, max(1, round(scale * 2.5))

    def _texts(self, img: np.ndarray, caption: str | None, caption_age_s: float | None,
               status: str | None, scale: float, thick: int) -> None:
        if status:
            self._status(img, status, scale, thick)
        if caption:
            text = caption if caption_age_s is None else f"{caption} ({caption_age_s:.1f} s ago)"
            self._caption(img, text, scale, thick)

    def _shade(self, img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
        """Darken img[y0:y1, x0:x1] in place (clipped to the image)."""
        h, w = img.shape[:2]
        sub = img[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
        if sub.size:
            f = round(self.BOX_SHADE * 256)
            sub[...] = (sub.astype(np.uint16) * f >> 8).astype(np.uint8)

    @staticmethod
    def _text(img: np.ndarray, text: str, x: int, y: int, scale: float, thick: int,
              color: RGB = WHITE) -> None:
        if text.isascii():
            cv2.putText(img, text, (x, y), _FONT, scale, color, thick, cv2.LINE_AA)
        else:  # Hershey fonts are ASCII only: they would draw "?" for each other letter
            glyphs.draw(img, text, x, y, _cap_height(scale, thick), color)

    def _legend(self, img: np.ndarray, present: list[int], scale: float, thick: int) -> None:
        (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thick)
        pad = max(2, th // 2)
        row = th + base + pad
        sw = th + base  # swatch side
        widths = [_text_width(self.class_names[c], scale, thick) for c in present]
        x0 = y0 = pad
        x1 = x0 + pad + sw + pad + max(widths) + pad
        y1 = y0 + pad + row * len(present)
        self._shade(img, x0, y0, x1, y1)
        for i, c in enumerate(present):
            top = y0 + pad + i * row
            color = tuple(int(v) for v in self.colors[c])
            cv2.rectangle(img, (x0 + pad, top), (x0 + pad + sw - 1, top + sw - 1), color,
                          cv2.FILLED)
            self._text(img, self.class_names[c], x0 + 2 * pad + sw, top + th, scale, thick)

    def _status(self, img: np.ndarray, text: str, scale: float, thick: int) -> None:
        (tw, th), base = cv2.getTextSize(text if text.isascii() else "Ag", _FONT, scale, thick)
        if not text.isascii():
            tw = _text_width(text, scale, thick)
        pad = max(2, th // 2)
        w = img.shape[1]
        x1, y0 = w - pad, pad
        x0, y1 = x1 - tw - 2 * pad, y0 + th + base + 2 * pad
        self._shade(img, x0, y0, x1, y1)
        self._text(img, text, x0 + pad, y0 + pad + th, scale, thick)

    def _caption(self, img: np.ndarray, text: str, scale: float, thick: int,
                 max_lines: int = 2) -> None:
        h, w = img.shape[:2]
        (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thick)
        pad = max(2, th // 2)
        lines = _wrap(text, w - 4 * pad, scale, thick, max_lines)
        widths = [_text_width(line, scale, thick) for line in lines]
        row = th + base + pad
        x0 = max((w - max(widths)) // 2 - pad, 0)
        y1 = h - pad
        y0 = y1 - row * len(lines) - pad
        self._shade(img, x0, y0, x0 + max(widths) + 2 * pad, y1)
        for i, line in enumerate(lines):
            self._text(img, line, x0 + pad, y0 + pad + th + i * row, scale, thick)


def _text_width(text: str, scale: float, thick: int) -> int:
    if text.isascii():
        return cv2.getTextSize(text, _FONT, scale, thick)[0][0]
    return glyphs.width(text, _cap_height(scale, thick))


@lru_cache(maxsize=32)
def _cap_height(scale: float, thick: int) -> int:
    """Inked height of a capital in the Hershey font at `scale` (getTextSize's height adds
    room for the stroke): what non-ASCII text is sized to, measured by drawing an "H"."""
    h = cv2.getTextSize("H", _FONT, scale, thick)[0][1]
    probe = np.zeros((2 * h + 4, h + 4), np.uint8)
    cv2.putText(probe, "H", (2, h + 2), _FONT, scale, 255, thick, cv2.LINE_AA)
    rows = np.flatnonzero(probe.max(axis=1) > 127)
    return int(rows[-1] - rows[0] + 1) if rows.size else h


@lru_cache(maxsize=16)  # a caption stays up for many frames: wrap it once, not per frame
def _wrap(text: str, width: int, scale: float, thick: int, max_lines: int) -> tuple[str, ...]:
    """Greedy word wrap to `width` pixels; the last line is cut with '...' if text remains."""
    words = text.split()
    lines: list[str] = []
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and _text_width(f"{line} {words[0]}", scale, thick) <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words or (lines and _text_width(lines[-1], scale, thick) > width):
        last = lines[-1]
        rest = " ".join([last, *words])
        while rest and _text_width(rest + "...", scale, thick) > width:
            rest = rest[:-1]
        lines[-1] = rest.rstrip() + "..."
    return tuple(lines) or ("",)
