from __future__ import annotations

import numpy as np
import pytest

from orstream.common.classes import CLASSES, palette
from orstream.pipeline.overlay import OverlayRenderer, OverlayStyle, blend_labels, outlines

PARTS = CLASSES["parts"]
COLORS = np.array(palette("parts"), np.uint8)
K = len(COLORS)


def reference(image, labels, colors, alpha, region=None, with_mask=False):
    """Plain numpy: index-array nearest upsampling, palette lookup, float blend, rounding.

    with_mask: also return the (H, W) mask of the pixels that get a class colour.
    """
    h, w = image.shape[:2]
    y0, x0, rh, rw = region or (0, 0, h, w)
    lh, lw = labels.shape
    out = image.astype(np.float64)
    ys = np.arange(max(y0, 0), min(y0 + rh, h))
    xs = np.arange(max(x0, 0), min(x0 + rw, w))
    up = labels.astype(np.int64)[((ys - y0) * lh) // rh][:, ((xs - x0) * lw) // rw]
    fg = (up > 0) & (up < len(colors))
    pal = np.zeros((max(256, int(up.max()) + 1), 3))
    pal[: len(colors)] = colors
    sub = out[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
    blended = sub * (1 - alpha) + pal[up] * alpha
    sub[fg] = blended[fg]
    out = np.rint(out).astype(np.uint8)
    if not with_mask:
        return out
    mask = np.zeros((h, w), bool)
    mask[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] = fg
    return out, mask


def rand_image(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("img_hw", "lab_hw", "alpha"),
    [
        ((37, 53), (9, 11), 0.45),
        ((24, 30), (24, 30), 0.3),
        ((61, 47), (13, 20), 1.0),
        ((18, 25), (7, 4), 0.0),
        ((20, 22), (31, 40), 0.6),  # label map larger than the image: nearest downsampling
    ],
)
def test_blend_matches_reference(img_hw, lab_hw, alpha):
    rng = np.random.default_rng(sum(img_hw) + sum(lab_hw))
    image = rand_image(rng, *img_hw)
    labels = rng.integers(0, K, lab_hw, dtype=np.uint8)
    before = image.copy()
    got = blend_labels(image, labels, COLORS, alpha)
    ref, drawn = reference(image, labels, COLORS, alpha, with_mask=True)
    assert np.array_equal(image, before)  # input untouched when out is None
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert np.array_equal(got[~drawn], image[~drawn])  # class 0 copied exactly
    if alpha > 0:
        assert (got[drawn] != image[drawn]).any()


def test_blend_matches_np_repeat_upsampling():
    rng = np.random.default_rng(1)
    image = rand_image(rng, 32, 40)
    labels = rng.integers(0, K, (8, 10), dtype=np.uint8)
    up = labels.repeat(4, axis=0).repeat(4, axis=1)
    ref = np.rint(image * 0.55 + COLORS[up].astype(float) * 0.45).astype(np.uint8)
    ref[up == 0] = image[up == 0]
    got = blend_labels(image, labels, COLORS, 0.45)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert np.array_equal(got[up == 0], image[up == 0])
    assert (got[up != 0] != image[up != 0]).any()


def test_class0_pixels_untouched_exactly():
    rng = np.random.default_rng(2)
    image = rand_image(rng, 40, 40)
    labels = np.zeros((10, 10), np.uint8)
    labels[2:5, 3:8] = 2
    got = blend_labels(image, labels, COLORS, 0.7)
    mask = np.zeros((40, 40), bool)
    mask[8:20, 12:32] = True
    assert np.array_equal(got[~mask], image[~mask])
    expected = (image[mask] * 0.3 + COLORS[2] * 0.7).round()
    assert np.abs(got[mask].astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    "region", [(5, 7, 20, 30), (0, 0, 40, 50), (-4, 35, 20, 30), (30, -6, 16, 12)]
)
def test_region_placement(region):
    rng = np.random.default_rng(3)
    image = rand_image(rng, 40, 50)
    labels = rng.integers(0, K, (8, 10), dtype=np.uint8)
    labels[0, 0] = labels[-1, -1] = 1  # corners of the region are drawn
    got = blend_labels(image, labels, COLORS, 0.5, region=region)
    ref = reference(image, labels, COLORS, 0.5, region)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    y0, x0, rh, rw = region
    inside = np.zeros((40, 50), bool)
    inside[max(y0, 0) : y0 + rh, max(x0, 0) : x0 + rw] = True
    assert np.array_equal(got[~inside], image[~inside])
    assert (got[inside] != image[inside]).any()
    ty, tx = max(y0, 0), max(x0, 0)  # the region's first visible pixel shows a label pixel
    ly, lx = (ty - y0) * 8 // rh, (tx - x0) * 10 // rw
    if labels[ly, lx]:
        assert not np.array_equal(got[ty, tx], image[ty, tx])


def test_out_of_range_ids_are_background():
    rng = np.random.default_rng(4)
    image = rand_image(rng, 20, 20)
    labels = np.array([[0, 1, 2, 3], [5, 200, 255, 1], [4, 9, 1, 0], [1, 1, 250, 6]], np.uint8)
    colors = COLORS[:3]  # K = 3: ids 3.. are background
    got = blend_labels(image, labels, colors, 0.6, outline=True)
    up = labels.repeat(5, 0).repeat(5, 1)
    bg = (up == 0) | (up >= 3)
    assert np.array_equal(got[bg], image[bg])
    assert (got[~bg] != image[~bg]).any()
    # wider dtypes with negative or > 255 ids do not wrap around onto real classes
    wide = labels.astype(np.int32)
    wide[0, 0], wide[2, 3] = -1, 257  # 257 would wrap to 1 in uint8
    got_wide = blend_labels(image, wide, colors, 0.6)
    assert np.array_equal(got_wide[:5, :5], image[:5, :5])
    assert np.array_equal(got_wide[10:15, 15:20], image[10:15, 15:20])


def test_in_place_and_given_out_match():
    rng = np.random.default_rng(5)
    image = rand_image(rng, 30, 36)
    labels = rng.integers(0, K, (6, 9), dtype=np.uint8)
    expected = blend_labels(image, labels, COLORS, 0.45, region=(3, 4, 24, 27), outline=True)
    out = np.zeros_like(image)
    assert blend_labels(image, labels, COLORS, 0.45, out=out, region=(3, 4, 24, 27),
                        outline=True) is out
    assert np.array_equal(out, expected)
    inplace = image.copy()
    assert blend_labels(inplace, labels, COLORS, 0.45, out=inplace, region=(3, 4, 24, 27),
                        outline=True) is inplace
    assert np.array_equal(inplace, expected)
    with pytest.raises(ValueError):
        blend_labels(image, labels, COLORS, 0.45, out=image[:, ::-1])


def test_outlines_hand_made():
    labels = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 1, 1, 2, 2, 0],
            [0, 0, 0, 2, 2, 0],
            [3, 3, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 1, 0, 1, 0, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 0, 0, 1, 1, 0],
            [1, 1, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    got = outlines(labels)
    assert got.dtype == np.uint8 and got.shape == (6, 6)
    assert np.array_equal(got, expected)


def test_outline_drawn_upsampled_in_outline_color():
    labels = np.zeros((6, 6), np.uint8)
    labels[1:5, 1:5] = 1
    image = np.full((18, 18, 3), 100, np.uint8)
    got = blend_labels(image, labels, COLORS, 0.5, outline=True, outline_color=(1, 2, 3))
    edge = outlines(labels).repeat(3, 0).repeat(3, 1).astype(bool)
    assert edge.sum() == 12 * 9
    assert np.all(got[edge] == (1, 2, 3))
    inner = labels.repeat(3, 0).repeat(3, 1).astype(bool) & ~edge
    assert np.all(np.abs(got[inner].astype(int) - (100 + COLORS[1].astype(int)) / 2) <= 1)
    plain = blend_labels(image, labels, COLORS, 0.5)
    assert not np.any(np.all(plain == (1, 2, 3), axis=-1))


@pytest.fixture(scope="module")
def renderer():
    r = OverlayRenderer(PARTS, palette("parts"))
    r.warmup()
    assert r.last_legend == []
    return r


def scene(rng, classes):
    image = rng.integers(60, 120, (270, 480, 3), dtype=np.uint8)
    labels = np.zeros((64, 80), np.uint8)
    for i, c in enumerate(classes):
        labels[20 + 8 * i : 26 + 8 * i, 30:60] = c
    return image, labels


def test_legend_lists_only_present_classes(renderer):
    rng = np.random.default_rng(6)
    image, labels = scene(rng, [1, 3])
    labels[0, 0], labels[0, 1] = 202, 7  # out of range (202 % 5 and 7 % 5 = 2): not listed
    out = renderer.draw(image, labels)
    assert renderer.last_legend == [PARTS[1], PARTS[3]]
    corner = (slice(0, 40), slice(0, 60))  # top-left: legend, no segmentation there
    assert not np.array_equal(out[corner], image[corner])
    # the swatch colours of present classes appear, the absent ones do not
    legend_px = out[:60, :100].reshape(-1, 3)
    for c in range(1, K):
        found = np.any(np.all(legend_px == COLORS[c], axis=1))
        assert found == (c in (1, 3)), PARTS[c]

    bare = renderer.draw(image, np.zeros_like(labels))
    assert renderer.last_legend == []
    assert np.array_equal(bare, image)  # nothing present, no text: frame unchanged

    no_legend = OverlayRenderer(PARTS, palette("parts"), OverlayStyle(legend=False))
    plain = no_legend.draw(image, labels)
    assert no_legend.last_legend == []
    assert np.array_equal(plain[corner], image[corner])


def test_caption_and_status_drawn(renderer):
    rng = np.random.default_rng(7)
    image, labels = scene(rng, [2])
    base = renderer.draw(image, labels)
    out = renderer.draw(image, labels, caption="grasper retracts tissue", caption_age_s=2.1,
                        status="30.0 fps | e2e p50 21 ms p99 35 ms | dropped 0")
    h, w = image.shape[:2]
    bottom = (slice(h - 40, h), slice(0, w))
    top_right = (slice(0, 30), slice(w // 2, w))
    assert not np.array_equal(out[bottom], base[bottom])
    assert not np.array_equal(out[top_right], base[top_right])
    middle = (slice(h // 2 - 20, h // 2 + 20), slice(0, w))  # text only in its boxes
    assert np.array_equal(out[middle], base[middle])
    # the caption box darkens what is under it (text aside)
    assert out[bottom].astype(int).mean() < base[bottom].astype(int).mean()
    # status alone leaves the bottom alone; caption alone leaves the top-right alone
    only_status = renderer.draw(image, labels, status="ok")
    assert np.array_equal(only_status[bottom], base[bottom])
    only_caption = renderer.draw(image, labels, caption="x")
    assert np.array_equal(only_caption[top_right], base[top_right])


def test_draw_in_place_matches_and_long_caption_fits(renderer):
    rng = np.random.default_rng(8)
    image, labels = scene(rng, [4])
    caption = "a very long scene caption that cannot fit on one line " * 6
    expected = renderer.draw(image, labels, region=(10, 20, 240, 400), caption=caption)
    frame = image.copy()
    got = renderer.draw(frame, labels, region=(10, 20, 240, 400), caption=caption, out=frame)
    assert got is frame
    assert np.array_equal(frame, expected)
    assert renderer.last_legend == [PARTS[4]]


def test_style_outline_and_alpha(renderer):
    rng = np.random.default_rng(9)
    image, labels = scene(rng, [1, 2])
    outlined = renderer.draw(image, labels)
    expected = blend_labels(image, labels, COLORS, 0.45, outline=True)
    region = (slice(60, None), slice(None))  # below the legend
    assert np.array_equal(outlined[region], expected[region])
    h, w = image.shape[:2]
    edge = outlines(labels)[(np.arange(h) * 64) // h][:, (np.arange(w) * 80) // w] > 0
    assert edge[60:].sum() > 100
    assert np.all(outlined[60:][edge[60:]] == 255)  # default outline colour: white
    flat = OverlayRenderer(PARTS, palette("parts"), OverlayStyle(alpha=0.8, outline=False,
                                                                   legend=False))
    assert np.array_equal(flat.draw(image, labels), blend_labels(image, labels, COLORS, 0.8))


def test_num_threads_gives_same_frame_and_restores_setting(renderer):
    import numba

    rng = np.random.default_rng(10)
    image, labels = scene(rng, [1, 3])
    one = OverlayRenderer(PARTS, palette("parts"), num_threads=1)
    before = numba.get_num_threads()
    assert np.array_equal(one.draw(image, labels, status="s"),
                          renderer.draw(image, labels, status="s"))
    assert numba.get_num_threads() == before


def _ink_columns(img: np.ndarray) -> np.ndarray:
    """Columns holding white text ink (the legend's swatches are coloured, not white)."""
    return np.flatnonzero((img.min(axis=2) > 200).any(axis=0))


def test_a_prompt_beyond_ascii_is_drawn_with_its_letters_not_question_marks():
    """cv2's Hershey fonts draw "?" for any non-ASCII letter: a prompt typed in French or
    German must read as typed, sized like the ASCII text beside it, inside the legend box."""
    colors = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    image = np.full((540, 960, 3), 60, np.uint8)
    labels = np.zeros((64, 80), np.uint8)
    labels[40:50, 10:30], labels[52:60, 10:30] = 1, 2

    def legend(names: list[str]) -> np.ndarray:
        return OverlayRenderer(["background", *names], colors).draw(image, labels)[:90, :480]

    typed = legend(["pince à biopsie", "Nadelhalter für"])
    folded = legend(["pince a biopsie", "Nadelhalter fur"])
    hershey = legend(["pince ? biopsie", "Nadelhalter f?r"])  # what cv2 alone drew
    assert not np.array_equal(typed, hershey)
    typed_ink, folded_ink = _ink_columns(typed), _ink_columns(folded)
    assert typed_ink.size and abs(int(typed_ink[-1]) - int(folded_ink[-1])) < 0.15 * folded_ink[-1]
    # The accents sit above the letters, inside the darkened box: outside the box's
    # rectangle the frame is untouched.
    rows, cols = np.nonzero((typed < 60).all(axis=2))  # the box's shading
    changed = (typed != image[:90, :480]).any(axis=2)
    changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = False
    assert not changed.any()


def test_text_no_font_covers_and_text_off_the_frame_do_not_break_the_frame():
    from orstream.pipeline import glyphs

    image = np.zeros((40, 60, 3), np.uint8)
    glyphs.draw(image, "持针器", 5, 30, 12, (255, 255, 255))  # DejaVu lacks CJK: its empty boxes
    assert image.any()
    for x, y in [(-500, 20), (55, 20), (10, -50), (10, 500)]:
        glyphs.draw(image, "Ножницы", x, y, 12, (255, 255, 255))  # clipped, never raises


def test_a_long_caption_beyond_ascii_is_measured_not_drawn_for_each_try_at_wrapping():
    """Wrapping trims a caption a character at a time; rasterising each try made a frame
    whose header carried 200 accented characters cost the render stage 270 ms. Only the
    lines that are drawn are rasterised, and the result stays two lines ending in '...'."""
    from orstream.pipeline import glyphs

    renderer = OverlayRenderer(["background", "a"], [(0, 0, 0), (255, 0, 0)])
    image = np.zeros((256, 320, 3), np.uint8)
    glyphs.rasterise.cache_clear()
    out = renderer.draw(image, np.zeros((8, 8), np.uint8), caption="é " * 100)
    assert glyphs.rasterise.cache_info().misses <= 2  # the two lines drawn
    assert out[128:].any() and not out[:128].any()  # drawn at the bottom, nowhere else
