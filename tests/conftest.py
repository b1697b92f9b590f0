from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import yaml
from loguru import logger

from orstream.common.net import free_port
from orstream.pipeline.config import DEFAULT_CONFIG
from orstream.training.synth.writers import write_endovis2017


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Four short synthetic videos at 320x256 in the EndoVis 2017 layout."""
    root = tmp_path_factory.mktemp("synth17")
    return write_endovis2017(root, videos=4, frames=8, seed=11, width=320, height=256,
                             workers=1)


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory) -> Path:
    """Engines built by the tests go to a throwaway cache, never the user's ~/.cache."""
    root = tmp_path_factory.mktemp("engines")
    patch = pytest.MonkeyPatch()
    patch.setenv("ORSTREAM_ENGINE_CACHE", str(root))
    yield root
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def synth_cache(tmp_path_factory) -> Path:
    """The live synthetic source's background cache is a throwaway one too."""
    root = tmp_path_factory.mktemp("synth-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("ORSTREAM_SYNTH_CACHE", str(root))
    yield root
    patch.undo()


@pytest.fixture(autouse=True)
def loguru_on_the_current_stderr():
    """A test that calls the CLI's main() leaves loguru writing to that test's captured
    stderr, closed once the test ends: threads a later test starts would then print
    "Logging error ... I/O operation on closed file" over the real failure. Each test
    ends with the one usual handler back."""
    yield
    logger.remove()
    logger.add(sys.stderr)


@pytest.fixture(scope="session")
def _port_configs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("port-configs")


@pytest.fixture(autouse=True)
def no_default_ports(monkeypatch, _port_configs):
    """Every pipeline a test starts, in this process or in one it spawns (the environment
    is inherited), publishes and answers questions on free ports, never on the live
    defaults 5600/5601: a developer's running `orstream run` and the suite, or two suites,
    share a host. The shipped config with its ports moved is the default config
    (ORSTREAM_CONFIG), so that a config file a test writes keeps its own publish endpoint;
    the ask port is moved by ORSTREAM_SET, since no test file names one and the model's
    default is 5601. A test that sets either variable itself replaces this."""
    publish, ask = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    tree = yaml.safe_load(DEFAULT_CONFIG.read_text())
    tree["publish"]["endpoint"], tree["describe"]["ask_endpoint"] = publish, ask
    path = _port_configs / f"pipeline-{publish.rpartition(':')[2]}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    monkeypatch.setenv("ORSTREAM_CONFIG", str(path))
    monkeypatch.setenv("ORSTREAM_SET", f"describe.ask_endpoint={ask}")


def _collect_frames(receiver, until: threading.Event, out: list) -> threading.Thread:
    def loop() -> None:
        while not until.is_set():
            frame = receiver.recv(100)
            if frame is not None:
                out.append(frame)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def collect_frames():
    """collect_frames(receiver, until, out): a started thread appending every frame the
    receiver yields to `out` until the event `until` is set."""
    return _collect_frames



def _prime(sender, receiver, make_frame) -> None:
    """A connecting SUB's subscription reaches the PUB asynchronously: send make_frame(0)
    until one arrives."""
    for _ in range(200):
        sender.send(make_frame(0))
        if receiver.recv(20) is not None:
            return
    raise AssertionError("subscription never reached the publisher")


@pytest.fixture
def prime():
    """prime(sender, receiver, make_frame): returns once a frame has got through."""
    return _prime
