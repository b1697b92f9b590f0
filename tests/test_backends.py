from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from orstream.common.classes import CLASSES
from orstream.engines import checkpoint as ckpt
from orstream.engines.backends.torch_backend import BackendError, TorchSegmenter, cpu_bf16_supported
from orstream.engines.predict import predict_labels
from orstream.engines.registry import build_model, model_config

SIZE = (64, 96)  # (H, W): small, the backends take any multiple of 32


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A seeded random unet_xs checkpoint file: what every backend is constructed from."""
    torch.manual_seed(0)
    model = build_model("unet_xs", 8)
    return ckpt.save(ckpt.Checkpoint("unet_xs", model_config("unet_xs", 8), "types",
                                     CLASSES["types"], SIZE, model.state_dict()),
                     tmp_path_factory.mktemp("weights") / "unet_xs.pt")


def _image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, (*SIZE, 3), dtype=np.uint8)


def test_fp32_backend_matches_plain_inference(weights):
    checkpoint = ckpt.load(weights)
    labels = TorchSegmenter(weights, SIZE, "fp32")(_image())
    reference = predict_labels(checkpoint.build(), _image()[None], checkpoint.mean,
                               checkpoint.std)[0]
    assert labels.dtype == np.uint8 and labels.shape == SIZE
    assert np.array_equal(labels, reference)


def test_bf16_runs_where_the_cpu_has_it_and_is_refused_where_it_does_not(weights):
    if cpu_bf16_supported():
        fp32 = TorchSegmenter(weights, SIZE, "fp32")(_image())
        bf16 = TorchSegmenter(weights, SIZE, "bf16")(_image())
        assert (fp32 == bf16).mean() > 0.9
    else:
        with pytest.raises(BackendError, match="no native bf16.*use precision fp32"):
            TorchSegmenter(weights, SIZE, "bf16")


def test_unservable_requests_are_errors_not_downgrades(weights):
    with pytest.raises(BackendError, match="fp16 is not served .* on cpu"):
        TorchSegmenter(weights, SIZE, "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA device"):
            TorchSegmenter(weights, SIZE, "fp32", device="cuda")


def test_every_backend_is_constructed_the_same_way():
    """open_engine constructs any backend as cls(artifact, size, precision, device, threads):
    a backend whose constructor differs would break it only when first chosen."""
    import inspect

    from orstream.engines.backends import BACKENDS, NAMES

    for name in NAMES:
        try:
            cls = BACKENDS[name]
        except ImportError:  # its library is not installed here (tensorrt)
            continue
        params = list(inspect.signature(cls.__init__).parameters)
        assert params == ["self", "artifact", "size", "precision", "device", "threads"], name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_agrees_with_cpu_fp32(weights):
    cpu = TorchSegmenter(weights, SIZE, "fp32")(_image())
    gpu = TorchSegmenter(weights, SIZE, "fp16", device="cuda")(_image())
    assert (cpu == gpu).mean() > 0.95


# `import openvino` reports itself to Google Analytics by default: a process forked from
# the importing thread posts to the network and a client id lands in ~/intel. A stage
# thread importing the backend must do neither.
def test_loading_openvino_phones_nobody(tmp_path):
    if importlib.util.find_spec("openvino") is None:  # importing it here would report it
        pytest.skip("openvino is not installed")
    probe = (
        "import os, sys, time\n"
        "forks = []\n"
        "os.register_at_fork(before=lambda: forks.append(1))\n"
        "from engines.backends.openvino_backend import _ov\n"
        "_ov().Core()\n"
        "time.sleep(1.0)\n"  # the report goes from a thread pool: give it time to fork
        "print(len(forks), 'openvino_telemetry' in sys.modules"
        " and sys.modules['openvino_telemetry'] is not None)\n")
    env = {**os.environ, "HOME": str(tmp_path), "CI": "", "TF_BUILD": "", "JENKINS_URL": ""}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "False"], out.stdout  # no fork, no telemetry module
    assert not (tmp_path / "intel").exists()  # no client id written
