from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from orstream.pipeline.config import (
    DEFAULT_CONFIG,
    ConfigError,
    EdgeConfig,
    PipelineConfig,
    effective_yaml,
    load_config,
)


def test_default_config_loads_with_the_shipped_weights(monkeypatch):
    monkeypatch.delenv("ORSTREAM_SET")  # the shipped file alone, not the tests' ports
    monkeypatch.delenv("ORSTREAM_CONFIG")
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


def test_an_unknown_model_is_one_error_naming_the_models():
    """Its shipped weights cannot be looked up, and that must not read as a second mistake."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["segment.model=nope"])
    assert "segment.model" in str(err.value) and "'unet' or 'tpsis'" in str(err.value)
    assert "segment.weights" not in str(err.value)


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


def test_orstream_set_errors_are_blamed_on_orstream_set(monkeypatch):
    monkeypatch.setenv("ORSTREAM_SET", "render.alpha=2")
    with pytest.raises(ConfigError, match=r"^ORSTREAM_SET render\.alpha=2: render\.alpha: "):
        load_config(None)
    monkeypatch.setenv("ORSTREAM_SET", "render.alpha")
    with pytest.raises(ConfigError) as err:
        load_config(None)
    assert str(err.value).startswith("ORSTREAM_SET 'render.alpha': expected KEY=VALUE")
    assert "--set" not in str(err.value)


def test_a_set_typo_is_blamed_on_the_set_with_the_key_it_meant(monkeypatch):
    monkeypatch.delenv("ORSTREAM_SET")
    with pytest.raises(ConfigError) as err:
        load_config(None, ["render.alpah=0.5"])
    assert str(err.value) == ("--set render.alpah=0.5: render.alpah: unknown key "
                              "(did you mean render.alpha?)")
    assert "pipeline.yaml" not in str(err.value)
    with pytest.raises(ConfigError, match=r"rendr: unknown key \(did you mean render\?\)"):
        load_config(None, ["rendr.alpha=0.5"])
    with pytest.raises(ConfigError, match=r"did you mean edges\.capture->segment\.mode\?"):
        load_config(None, ["edges.capture->segment.mdoe=lossless"])
    with pytest.raises(ConfigError, match=r"did you mean capture->segment\?"):
        load_config(None, ["edges.capture->segmnt.mode=lossless"])


def test_a_typo_in_the_file_is_blamed_on_the_file(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("render:\n  aplha: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["render.alpha=0.6"])
    assert str(err.value) == (f"{path}: render.aplha: unknown key (did you mean "
                              f"render.alpha?)")


def test_port_base_moves_the_ports_that_are_on():
    cfg = load_config(None, ["masks.endpoint=tcp://127.0.0.1:1"], port_base=7100)
    assert cfg.publish.endpoint == "tcp://127.0.0.1:7100"
    assert cfg.describe.ask_endpoint == "tcp://127.0.0.1:7101"
    assert cfg.masks.endpoint == "tcp://127.0.0.1:7102"
    # A stream that is off stays off; --publish names its own endpoint over the base.
    cfg = load_config(None, ["describe.ask_endpoint=null"], port_base=7100,
                      publish__endpoint="tcp://127.0.0.1:7200")
    assert cfg.publish.endpoint == "tcp://127.0.0.1:7200"
    assert cfg.describe.ask_endpoint is None and cfg.masks.endpoint is None


def test_the_effective_yaml_reads_back_as_the_same_config(tmp_path):
    cfg = load_config(None, ["segment.size=320x256", "render.alpha=0.3",
                             "edges.capture->segment.hwm=1"])
    text = effective_yaml(cfg)
    assert "size: 320x256" in text  # written WxH, as a user writes it
    path = tmp_path / "effective.yaml"
    path.write_text(text)
    assert load_config(path) == cfg


def test_tests_never_get_the_live_default_ports(tmp_path):
    """conftest moves every pipeline a test starts (ORSTREAM_CONFIG and ORSTREAM_SET,
    inherited by the processes it spawns) off 5600/5601, where a developer's own
    `orstream run` may be listening; a config file a test writes keeps its publish port."""
    own = tmp_path / "own.yaml"
    own.write_text("publish: {endpoint: 'tcp://127.0.0.1:7400'}\n")
    for cfg in (load_config(), load_config(own)):
        for endpoint in (cfg.publish.endpoint, cfg.describe.ask_endpoint):
            assert endpoint.rsplit(":", 1)[1] not in ("5600", "5601")
    assert load_config(own).publish.endpoint == "tcp://127.0.0.1:7400"


def test_orstream_config_names_the_default_file(tmp_path, monkeypatch):
    site = tmp_path / "site.yaml"
    site.write_text("render: {alpha: 0.25}\n")
    monkeypatch.setenv("ORSTREAM_CONFIG", str(site))
    assert load_config().render.alpha == 0.25
    assert load_config(DEFAULT_CONFIG).render.alpha == 0.45  # a path given wins
    monkeypatch.setenv("ORSTREAM_CONFIG", str(tmp_path / "moved.yaml"))
    with pytest.raises(ConfigError, match=r"moved.yaml does not exist \(ORSTREAM_CONFIG="):
        load_config()  # nothing the user typed names that file: the variable is blamed


def test_a_command_line_flag_is_blamed_as_typed_with_the_endpoint_it_meant():
    with pytest.raises(ConfigError, match=r"^--publish 5812: .*did you mean tcp://127.0.0.1:5812"):
        load_config(None, flags={"publish.endpoint": "--publish"}, publish__endpoint="5812")


def _sections(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """(prefix, model) of the config and of each section in it, edges' EdgeConfig included."""
    out = [(prefix, model)]
    for name, field in model.model_fields.items():
        inner = field.annotation
        if typing.get_origin(inner) is dict and typing.get_args(inner)[1] is EdgeConfig:
            inner = EdgeConfig
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            out += _sections(inner, f"{prefix}{name}.")
    return out


def _line_of(text: str, section: str, name: str) -> str | None:
    """The line of `name` at the top level (section "") or inside `section:`."""
    if not section:
        found = re.search(rf"^{re.escape(name)}:.*$", text, re.M)
        return found.group(0) if found else None
    indent = ""
    for part in section.split("."):  # segment.triton: the triton block inside segment's
        body = re.search(rf"^{indent}{re.escape(part)}:.*\n((?:{indent}[ #].*\n|\n)*)", text,
                         re.M)
        if body is None:
            return None
        text, indent = body.group(1), indent + "  "
    found = re.search(rf"^{indent}{re.escape(name)}:.*$", text, re.M)
    return found.group(0) if found else None


def test_the_shipped_yaml_shows_every_key_with_a_comment(monkeypatch):
    """configs/pipeline.yaml is where users learn the keys: each field of the models is
    written there with its comment, and the file's values are the models' defaults."""
    text = DEFAULT_CONFIG.read_text()
    edges = yaml.safe_load(text)["edges"]
    sections = _sections(PipelineConfig)
    for prefix, model in sections:
        for name in model.model_fields:
            key = f"{prefix}{name}"
            if any(key + "." == p for p, _ in sections) or key == "edges":
                continue  # a section: its keys are checked one by one
            if prefix == "edges.":  # one line per edge, whose keys are explained above them
                assert all(name in edge for edge in edges.values()), key
                assert re.search(rf"^#.*\b{name} \(", text, re.M), f"{key} is not explained"
                continue
            line = _line_of(text, prefix.rstrip("."), name)
            assert line is not None, f"{key} is missing from {DEFAULT_CONFIG}"
            assert "  # " in line, f"{key} has no comment in {DEFAULT_CONFIG}"
    assert all("  # " in _line_of(text, "edges", edge) for edge in edges)
    monkeypatch.delenv("ORSTREAM_SET")
    shipped = load_config(DEFAULT_CONFIG)
    assert shipped.model_dump(exclude={"segment": {"weights"}}) == \
        PipelineConfig(segment={"weights": shipped.segment.weights}).model_dump(
            exclude={"segment": {"weights"}})
    assert Path(shipped.segment.weights).is_file()


def test_the_readmes_config_paths_work_from_any_folder(tmp_path, monkeypatch):
    """`--config configs/scaleout/...` as the README writes it, run outside the repository."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/scaleout/two-workers.yaml")
    assert "capture->segment" in cfg.edges
    with pytest.raises(ConfigError, match="config file configs/nope.yaml does not exist"):
        load_config("configs/nope.yaml")


def test_a_budget_typo_is_blamed_on_the_set_with_a_suggestion():
    from orstream.pipeline.bench.profiles import ProfileError, load_profile

    with pytest.raises(ProfileError, match=r"^--set budgets.end_to_end_p99_msec=50: .*"
                                           r"did you mean budgets.end_to_end_p99_ms\?"):
        load_profile("cpu", overrides=["budgets.end_to_end_p99_msec=50"])
