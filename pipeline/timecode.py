"""A timecode burnt into the picture: seq and capture time as black and white blocks.

A display client that reads the code back from the pixels it shows measures capture to
display the way a camera filming the screen would, with encode, transport, decode and the
display's conversions inside the figure, and without trusting any header (`orstream view
--measure`). The layout is fixed so that a client in any language can read it (PROTOCOL.md,
"Timecode in the pixels").

Layout, in units of a 1920x1080 frame (a frame of another size scales x by W/1920 and y by
H/1080, each block edge rounded to the nearest pixel):

- a grid of 16 x 12 blocks of 16 x 16 units, top-left corner at (x=16, y=444): units 16..272
  across, 444..636 down. That is left of the EndoVis crop the segment stage feeds the model
  (columns 320..1600), outside the endoscope's circular field of view, below the legend
  (top-left) and above the caption (bottom): nothing the overlay draws covers it.
- a block is one bit: white (255, 255, 255) is 1, black (0, 0, 0) is 0. Grey, so that
  chroma subsampling leaves it alone and RGB and BGR read the same.
- row 0 is the sync pattern 0xCB8C (bits MSB first, left to right): it says a code is
  there and gives the black and white levels the other rows are thresholded against
  (halfway between), so a darkened or contrast-squeezed picture still reads.
- rows 1..11 hold 176 bits, row-major, MSB first: the 22 bytes
  ``seq (u32) | t_capture_ns (u64) | t_wall_ns (u64) | crc (u16)``, big-endian. seq is
  the frame's seq modulo 2**32; t_capture_ns is CLOCK_MONOTONIC of the capturing host,
  t_wall_ns is CLOCK_REALTIME (Unix epoch), both the frame's own (the header's) values.
  crc is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor) of
  the first 20 bytes.

Reading samples 3 x 3 points in the middle of each block (at 0.3, 0.5 and 0.7 of its
width and height, away from the edges where compression rings), averages them over the
colour channels, and rejects the code (None, never a guess) when the sync row's contrast
is under 48 grey levels, when any block lies within a quarter of that contrast of the
threshold, when the sync pattern differs, or when the CRC does not match. With 16-unit
blocks the code survives H.264 at CRF 23 and a 3x downscale (5 px blocks at 640x360).
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

# Geometry in 1920x1080 units (see the module docstring).
REF_W, REF_H = 1920, 1080
X0, Y0 = 16, 444
BLOCK = 16
COLS, ROWS = 16, 12
SYNC = 0xCB8C  # row 0; 8 ones and 8 zeros, both levels on either side of the row
MIN_BLOCK_PX = 4  # writing: blocks smaller than this do not survive H.264 (480x270 frames)
MIN_READ_BLOCK_PX = 3.0  # reading: a picture shrunk further is unreadable, not misread
MIN_CONTRAST = 48  # grey levels between the sync row's black and white
MARGIN = 0.25  # of the contrast: a block nearer the threshold than this is unreadable
SAMPLES = (0.3, 0.5, 0.7)  # where in a block it is sampled, as fractions of its size

_PAYLOAD = struct.Struct(">IQQ")  # seq, t_capture_ns, t_wall_ns
_DATA_BITS = (ROWS - 1) * COLS  # 176 = (4 + 8 + 8 + 2) bytes * 8
assert (_PAYLOAD.size + 2) * 8 == _DATA_BITS, "the grid must hold the payload and its CRC"
_SYNC_BITS = np.unpackbits(np.array([SYNC >> 8, SYNC & 0xFF], np.uint8))


class TimecodeError(ValueError):
    """A frame too small to carry the timecode."""


@dataclass(frozen=True)
class Timecode:
    seq: int  # the frame's seq modulo 2**32
    t_capture_ns: int  # CLOCK_MONOTONIC of the capturing host
    t_wall_ns: int  # CLOCK_REALTIME, for a display on another host


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (binascii's crc_hqx is that CRC with init 0xFFFF)."""
    return binascii.crc_hqx(data, 0xFFFF)


def _edges(size: int, ref: int, origin: int, count: int) -> np.ndarray:
    """Pixel edges of `count` blocks along an axis of `size` pixels (count + 1 values)."""
    return np.round((origin + np.arange(count + 1) * BLOCK) * size / ref).astype(np.int64)


@lru_cache(maxsize=8)
def _layout(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(row edges, column edges) of the grid in a frame of this size."""
    if BLOCK * width / REF_W < MIN_BLOCK_PX or BLOCK * height / REF_H < MIN_BLOCK_PX:
        raise TimecodeError(
            f"a {width}x{height} frame is too small for the timecode (blocks under "
            f"{MIN_BLOCK_PX} px; it needs at least {REF_W * MIN_BLOCK_PX // BLOCK}x"
            f"{REF_H * MIN_BLOCK_PX // BLOCK})")
    return _edges(height, REF_H, Y0, ROWS), _edges(width, REF_W, X0, COLS)


def fits(height: int, width: int) -> bool:
    """Whether a frame of this size can carry the timecode."""
    try:
        _layout(height, width)
    except TimecodeError:
        return False
    return True


def _bits(seq: int, t_capture_ns: int, t_wall_ns: int) -> np.ndarray:
    """(ROWS, COLS) uint8 0/255: the sync row, then payload and CRC."""
    payload = _PAYLOAD.pack(seq & 0xFFFF_FFFF, t_capture_ns, t_wall_ns)
    data = payload + struct.pack(">H", crc16(payload))
    bits = np.concatenate([_SYNC_BITS, np.unpackbits(np.frombuffer(data, np.uint8))])
    return (bits * np.uint8(255)).reshape(ROWS, COLS)


def write(image: np.ndarray, seq: int, t_capture_ns: int, t_wall_ns: int) -> None:
    """Burn the timecode into `image` ((H, W, 3) uint8, RGB or BGR) in place.

    Costs a few tens of microseconds at 1080p: the grid is 256 x 192 pixels, written as one
    block-expanded array. TimecodeError when the frame is too small (under 480x270).
    """
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, \
        f"timecode goes on (H, W, 3) uint8 frames, got {image.shape} {image.dtype}"
    ys, xs = _layout(image.shape[0], image.shape[1])
    grid = _bits(seq, t_capture_ns, t_wall_ns)
    # (ROWS, COLS) -> (rows px, cols px): each block repeated over its own pixel span, so
    # blocks tile exactly even where the scaled block size is not a whole number.
    tile = np.repeat(np.repeat(grid, np.diff(ys), axis=0), np.diff(xs), axis=1)
    # (h, w) -> (h, w, 3) contiguous first: numpy broadcasting a grey tile into the strided
    # RGB slice measured 8x slower (240 against 30 us at 1080p) than copying whole rows.
    image[ys[0]:ys[-1], xs[0]:xs[-1]] = cv2.cvtColor(tile, cv2.COLOR_GRAY2RGB)


@lru_cache(maxsize=8)
def _sample_points(height: int, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Row and column indices of the sample points (ROWS*3, COLS*3), or None if too small."""
    by, bx = BLOCK * height / REF_H, BLOCK * width / REF_W
    if by < MIN_READ_BLOCK_PX or bx < MIN_READ_BLOCK_PX:
        return None
    f = np.asarray(SAMPLES)
    ys = ((Y0 + (np.arange(ROWS)[:, None] + f) * BLOCK) * height / REF_H).astype(np.int64)
    xs = ((X0 + (np.arange(COLS)[:, None] + f) * BLOCK) * width / REF_W).astype(np.int64)
    return ys.ravel(), xs.ravel()


def read(image: np.ndarray) -> Timecode | None:
    """The timecode in `image` ((H, W, 3) uint8, RGB or BGR, any size down to 360x203), or
    None when there is none or it does not read cleanly: never a wrong value that passed
    the checks by chance short of a CRC-16 collision (1 in 65536 of corrupted codes that
    also pass the sync and margin checks)."""
    if image.ndim != 3 or image.shape[2] != 3:
        return None
    points = _sample_points(image.shape[0], image.shape[1])
    if points is None:
        return None
    ys, xs = points
    # (ROWS*3, COLS*3, 3) -> (ROWS, COLS): mean of 3x3 points and the three channels
    samples = image[ys[:, None], xs[None, :]].astype(np.float32)
    levels = samples.reshape(ROWS, len(SAMPLES), COLS, len(SAMPLES), 3).mean(axis=(1, 3, 4))
    sync = levels[0]
    white, black = sync[_SYNC_BITS == 1].mean(), sync[_SYNC_BITS == 0].mean()
    contrast = white - black
    if contrast < MIN_CONTRAST:
        return None
    threshold = (white + black) / 2
    if (np.abs(levels - threshold) < MARGIN * contrast).any():
        return None  # an ambiguous block: an erasure, not a bit to guess
    bits = (levels > threshold).astype(np.uint8)
    if not np.array_equal(bits[0], _SYNC_BITS):
        return None
    data = np.packbits(bits[1:].ravel()).tobytes()
    payload, (crc,) = data[:_PAYLOAD.size], struct.unpack(">H", data[_PAYLOAD.size:])
    if crc16(payload) != crc:
        return None
    return Timecode(*_PAYLOAD.unpack(payload))
