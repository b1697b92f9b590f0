"""Export the shipped types U-Net with orstream's own exporter (run in ORSTREAM_VENV).

Usage: nice -n 10 ORSTREAM_VENV/bin/python export_unet.py OUT.onnx [H W]
Writes OUT.onnx (uint8 NHWC 'frames' -> uint8 'labels', batch dynamic 1..64) and OUT.frames.npy /
OUT.labels.npy: 8 deterministic test frames and the labels in-process onnxruntime gives them.
"""

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from orstream.engines import checkpoint as ckpt
from orstream.engines.backends.onnx_export import export_onnx

out = Path(sys.argv[1])
h, w = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (256, 320)
out.parent.mkdir(parents=True, exist_ok=True)
checkpoint = ckpt.load(ckpt.shipped("types"))
print("classes", checkpoint.classes, "trained at", checkpoint.input_size)
t0 = time.perf_counter()
export_onnx(checkpoint, (h, w), out)
print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")

sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
for i in sess.get_inputs():
    print("input", i.name, i.type, i.shape)
for o in sess.get_outputs():
    print("output", o.name, o.type, o.shape)
# Smooth random frames (not pure noise) so the model predicts several classes.
rng = np.random.default_rng(0)
small = rng.integers(0, 256, (8, h // 16, w // 16, 3), dtype=np.uint8)
frames = np.ascontiguousarray(small.repeat(16, axis=1).repeat(16, axis=2))
labels = sess.run(None, {"frames": frames})[0]
print("labels", labels.dtype, labels.shape, "classes present", np.unique(labels).tolist())
np.save(out.with_suffix(".frames.npy"), frames)
np.save(out.with_suffix(".labels.npy"), labels)
