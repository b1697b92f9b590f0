"""Triton Python-backend model: the exported orstream U-Net (uint8 NHWC -> uint8 labels) run by
onnxruntime inside the backend's stub process. One execute() call receives every request the
dynamic batcher merged; they are concatenated into one onnxruntime run."""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# The stub in nvidia-pytriton 0.7.0 (Triton 2.51) was built for numpy 1: under numpy 2,
# Tensor.as_numpy() returns wrong bytes and pb_utils.Tensor(name, array) sends an EMPTY output
# (measured). DLPack works under numpy 2 but the stub turns unhealthy under numpy 1.26 with it.
NUMPY2 = int(np.__version__.split(".")[0]) >= 2


def input_array(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return np.from_dlpack(tensor) if NUMPY2 else tensor.as_numpy()


def output_tensor(name, array):
    if NUMPY2:
        return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))
    return pb_utils.Tensor(name, array)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        pb_utils.Logger.log_info(
            f"unet_types: python {sys.version.split()[0]} exe={sys.executable} prefix={sys.prefix} "
            f"numpy {np.__version__} from {np.__file__}, onnxruntime {ort.__version__} "
            f"instance {args['model_instance_name']}")

    def execute(self, requests):
        frames = [input_array(r, "frames") for r in requests]
        counts = [f.shape[0] for f in frames]
        batch = frames[0] if len(frames) == 1 else np.concatenate(frames)
        labels = self.session.run(None, {"frames": batch})[0]
        responses, start = [], 0
        for n in counts:
            out = output_tensor("labels", labels[start:start + n])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += n
        return responses

    def finalize(self):
        self.session = None
