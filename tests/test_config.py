from __future__ import annotations

import pytest
from orstream.pipeline.config import ConfigError, load_config


def test_default_config_loads_with_the_shipped_weights():
    cfg = load_config()
    assert cfg.source.spec == "synthetic" and cfg.source.fps == 30
    assert cfg.segment.weights.is_file()
    assert cfg.publish.endpoint == "tcp://127.0.0.1:5600"


def test_overrides_apply_and_parse_yaml_scalars():
    cfg = load_config(None, ["render.alpha=0.7", "publish.endpoint=null",
                             "edges.capture->segment.mode=lossless"], record__path="x.mp4")
    assert cfg.render.alpha == 0.7
    assert cfg.publish.endpoint is None
    assert cfg.edges["capture->segment"].mode == "lossless"
    assert str(cfg.record.path) == "x.mp4"


@pytest.mark.parametrize(("override", "names"), [
    ("render.alpah=0.5", ["render.alpah", "unknown key"]),
    ("render.alpha=2", ["render.alpha", "less than or equal to 1", "2"]),
    ("segment.precision=int4", ["segment.precision", "int4"]),
    ("publish.endpoint=udp://x:1", ["publish.endpoint", "udp://x:1"]),
    ("segment.weights=nowhere.pt", ["segment.weights", "nowhere.pt"]),
    ("edges.a->b.mode=latest", ["edges", "a->b"]),
])
def test_errors_name_the_key_and_the_value(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for text in names:
        assert text in str(err.value)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["render.alpha"])


def test_publishing_labels_needs_segmentation():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["segment.enabled=false", "publish.parts=[overlay, labels]"])
    assert "publish.parts" in str(err.value) and "segment.enabled" in str(err.value)
    # No publisher, nothing to send: the parts list is not an error then.
    cfg = load_config(None, ["segment.enabled=false", "publish.parts=[overlay, labels]",
                             "publish.endpoint=null"])
    assert not cfg.segment.enabled
    assert load_config().segment.enabled  # on by default


def test_orstream_set_from_the_environment_applies_before_set(monkeypatch):
    monkeypatch.setenv("ORSTREAM_SET", "render.alpha=0.2; describe.interval_s=5")
    cfg = load_config(None, ["render.alpha=0.7"])
    assert cfg.render.alpha == 0.7 and cfg.describe.interval_s == 5
    monkeypatch.setenv("ORSTREAM_SET", "render.alpha=2")
    with pytest.raises(ConfigError, match="render.alpha"):
        load_config(None)


def test_two_sockets_on_one_address_are_refused_before_anything_binds():
    """`--publish` on the ask port used to fail at start-up with "address already in use";
    now the config names both keys, and says nothing of the rest of the configuration."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["describe.ask_endpoint=tcp://localhost:5601"],
                    publish__endpoint="tcp://127.0.0.1:5601")
    message = str(err.value)
    assert "describe.ask_endpoint and publish.endpoint are both" in message
    assert "another port" in message and "segment" not in message
    assert load_config(None, ["describe.ask_endpoint=tcp://127.0.0.1:5602"],
                       publish__endpoint="tcp://127.0.0.1:5601").publish.endpoint
