"""The wheel as users get it: built, installed outside the repository, and run from a folder
that is not the repository (`run`, `bench`, `synth`, `eval` find configs and weights in the
installed package), with `orstream` the only top-level package it brings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a checkout holds beyond the package: environments, caches, data, build outputs.
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "data",
                                    "runs", "out", "__pycache__", ".*cache", "*.pyc")


def _package_folders() -> set[str]:
    """orstream.X.Y for every folder of the tree with an __init__.py (the root: orstream)."""
    found = set()
    for init in REPO.rglob("__init__.py"):
        rel = init.parent.relative_to(REPO)
        if rel.parts and (rel.parts[0].startswith(".") or rel.parts[0] in ("tests", "build")):
            continue
        found.add(".".join(("orstream", *rel.parts)))
    return found


def test_pyproject_lists_every_package_of_the_tree():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    missing = _package_folders() - listed
    assert not missing, f"add to pyproject.toml's packages: {sorted(missing)}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tree (the checkout stays clean of build/), then
    `pip install --no-deps --target T`: T holds orstream and nothing of the repository."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    wheels = tmp / "wheels"
    # --no-build-isolation: the environment's setuptools, not one fetched from an index.
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(wheels)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = wheels.glob("orstream-*.whl")
    target = tmp / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"orstream"}, top
    return target


def test_the_installed_wheel_runs_from_any_folder(installed, tmp_path):
    work = tmp_path / "elsewhere"  # not the repository: nothing is found by accident
    work.mkdir()
    # The installed package's own configs/pipeline.yaml, not the tests' copy (conftest).
    env = {k: v for k, v in os.environ.items() if k != "ORSTREAM_CONFIG"}
    env["PYTHONPATH"] = str(installed)

    def orstream(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(installed / "bin" / "orstream"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        return done

    where = subprocess.run([sys.executable, "-c", "import orstream.pipeline.cli as c; "
                            "print(c.__file__)"], cwd=work, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(installed), where  # the wheel's, not the checkout's

    assert orstream("--version").stdout.strip() == "orstream 0.2.0"
    quick = ["--set", "describe.enabled=false", "--set", "segment.backend=torch",
             "--set", "source.width=640", "--set", "source.height=360"]
    run = orstream("run", "--frames", "10", "--publish", "null", *quick)
    assert run.returncode == 0, run.stderr[-3000:]
    # TP-SIS reads a brand name with the instrument vocabulary the wheel ships
    prompted = orstream("run", "--frames", "3", "--publish", "null", *quick,
                        "--set", "segment.model=tpsis", "--set", "segment.prompts=[ligasure]")
    assert prompted.returncode == 0, prompted.stderr[-3000:]
    assert "'ligasure' read as 'Vessel Sealer'" in prompted.stderr, prompted.stderr[-3000:]

    bench = orstream("bench", "--frames", "20", "--warmup", "5", "--no-peers",
                     "--out", "report", "--set", "publish.endpoint=null", *quick)
    assert bench.returncode in (0, 1), bench.stderr[-3000:]  # 1: a budget broke on this host
    assert (work / "report" / "report.json").is_file()

    synth = orstream("synth", "dataset", "synth", "--videos", "2", "--frames", "4",
                     "--step", "1", "--size", "320x256", "--workers", "1")
    assert synth.returncode == 0, synth.stderr[-3000:]
    weights = installed / "orstream" / "engines" / "weights" / "unet_xs_types.pt"
    scored = orstream("eval", "--data", "synth", "--weights", str(weights), "--json")
    assert scored.returncode == 0, scored.stderr[-3000:]
    scores = json.loads(scored.stdout)
    assert scores["images"] == 8 and 0 <= scores["mean_dice"] <= 1
