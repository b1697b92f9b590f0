"""Reading a YAML file that must hold a mapping (pipeline configs, train configs, device
profiles), with errors that name the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orstream.common.errors import UsageError


class YamlError(UsageError):
    """A YAML file that is missing, malformed, or not a mapping of keys."""


def load_mapping(path: Path | str, error: type[Exception] = YamlError) -> dict[str, Any]:
    """The file's top-level mapping ({} for an empty file). `error` is raised with a message
    naming the file, so each caller keeps its own error type (ConfigError, ProfileError)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(tree, dict):
        raise error(f"{path}: the top level must be a mapping of keys")
    return tree
