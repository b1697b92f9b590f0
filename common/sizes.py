"""Frame and model sizes written as text: always WxH (width first, as video people write
1920x1080), for every CLI flag, `--set` value and YAML string; tuples in code stay in the
order their API names (`(w, h)` from `parse_size`, `(h, w)` for model inputs)."""

from __future__ import annotations

from orstream.common.errors import UsageError

# The U-Net halves its input five times (depth 5), so each side must divide by 2**5.
UNET_STRIDE = 32


class SizeError(UsageError):
    """A size that is not WxH, or a model input the network cannot take."""


def parse_size(text: str) -> tuple[int, int]:
    """'320x256' -> (320, 256), i.e. (width, height); SizeError naming the text otherwise."""
    parts = str(text).strip().lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SizeError(f"expected WxH such as 320x256, got {text!r}")
    width, height = (int(p) for p in parts)
    if width <= 0 or height <= 0:
        raise SizeError(f"size {text!r}: width and height must be positive (WxH such as "
                        f"320x256)")
    return width, height


def parse_hw(text: str) -> tuple[int, int]:
    """'320x256' (WxH, as written everywhere) -> (256, 320), the (H, W) a model input is."""
    width, height = parse_size(text)
    return height, width


def format_hw(hw: tuple[int, int]) -> str:
    """(H, W) -> 'WxH', the way every size is written for people."""
    return f"{hw[1]}x{hw[0]}"


def check_unet_input(hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) unchanged when both sides divide by 32; SizeError saying the nearest that do."""
    h, w = hw
    if h <= 0 or w <= 0 or h % UNET_STRIDE or w % UNET_STRIDE:
        fit = (max(UNET_STRIDE, round(h / UNET_STRIDE) * UNET_STRIDE),
               max(UNET_STRIDE, round(w / UNET_STRIDE) * UNET_STRIDE))
        raise SizeError(f"model input {format_hw(hw)} (WxH): width and height must be positive "
                        f"multiples of {UNET_STRIDE} (the U-Net halves them five times); "
                        f"the nearest is {format_hw(fit)}")
    return hw
