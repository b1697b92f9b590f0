"""The leaf modules every layer shares: one way to write a size, the EndoVis crop, YAML files."""

from __future__ import annotations

import numpy as np
import pytest

from orstream.common.crop import STANDARD_CROP, crop_region, endovis_region
from orstream.common.errors import OrstreamError
from orstream.common.sizes import SizeError, check_unet_input, format_hw, parse_hw, parse_size
from orstream.common.yamlio import YamlError, load_mapping
from orstream.pipeline.cli import main
from orstream.pipeline.config import ConfigError, load_config
from orstream.training.unet_trainer import TrainConfig


def test_sizes_are_written_width_first_everywhere():
    assert parse_size("1920x1080") == (1920, 1080)
    assert parse_hw("320x256") == (256, 320) and format_hw((256, 320)) == "320x256"
    for bad in ("256", "320x", "axb", "0x256", "320x256x3"):
        with pytest.raises(SizeError, match="expected WxH such as 320x256|positive"):
            parse_size(bad)
    # The same text means the same size in a --set, a train config and the CLI.
    assert load_config(None, ["segment.size=320x256"]).segment.size == (256, 320)
    assert TrainConfig(data="x", size="320x256", crop="160x128").size == (256, 320)
    assert TrainConfig(data="x", size="320x256", crop="160x128").crop == (128, 160)


def test_a_size_the_unet_cannot_take_names_the_nearest_that_it_can():
    assert check_unet_input((256, 320)) == (256, 320)
    with pytest.raises(SizeError, match="multiples of 32.*nearest is 320x256"):
        check_unet_input((250, 330))
    with pytest.raises(ConfigError, match="segment.size.*multiples of 32"):
        load_config(None, ["segment.size=330x250"])
    assert issubclass(SizeError, OrstreamError) and issubclass(SizeError, ValueError)


def test_a_bad_size_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--weights", "w.pt", "--backend", "torch", "--size", "256"])
    assert exit_.value.code == 2
    assert "expected WxH such as 320x256, got '256'" in capsys.readouterr().err


def test_the_endovis_crop_scales_with_the_frame():
    assert endovis_region(1080, 1920) == STANDARD_CROP
    assert endovis_region(540, 960) == (14, 160, 512, 640)
    assert crop_region("none", 360, 640) == (0, 0, 360, 640)


def test_yaml_files_that_are_missing_broken_or_not_a_mapping_are_named(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("a: 1  # comment\n")
    assert load_mapping(good) == {"a": 1}
    (tmp_path / "empty.yaml").write_text("")
    assert load_mapping(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(YamlError, match="list.yaml: the top level must be a mapping"):
        load_mapping(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_mapping(tmp_path / "bad.yaml", ConfigError)
    with pytest.raises(YamlError, match="missing.yaml does not exist"):
        load_mapping(tmp_path / "missing.yaml")


def test_latency_histogram_gives_the_percentiles_of_a_long_run_in_constant_memory():
    from orstream.common.timing import LatencyHistogram, stats

    rng = np.random.default_rng(0)
    # A display's latencies, plus a clock ahead of the publisher's (negative) and a stall.
    data = np.concatenate([rng.lognormal(3, 0.7, 20000), rng.normal(-2, 1, 500), [4000.0]])
    hist = LatencyHistogram()
    size = hist._pos.nbytes + hist._neg.nbytes
    for value in data:
        hist.add(value)
    hist.add(float("nan"))  # a broken clock reading is not a latency
    got, want = hist.stats(), stats(data)
    assert got["n"] == len(data) and got["max"] == 4000.0
    assert got["mean"] == pytest.approx(want["mean"])
    for p in ("p50", "p95", "p99"):
        assert got[p] == pytest.approx(want[p], rel=0.005), p
    assert hist.percentile(0) == pytest.approx(data.min(), rel=0.005)
    assert hist._pos.nbytes + hist._neg.nbytes == size
    assert LatencyHistogram().stats()["p50"] is None
