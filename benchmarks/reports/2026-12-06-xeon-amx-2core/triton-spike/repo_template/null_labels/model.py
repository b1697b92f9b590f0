"""Null model: the U-Net's tensors, zeros out, no inference: the transport floor."""

import numpy as np
import triton_python_backend_utils as pb_utils

NUMPY2 = int(np.__version__.split(".")[0]) >= 2


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for r in requests:
            t = pb_utils.get_input_tensor_by_name(r, "frames")
            frames = np.from_dlpack(t) if NUMPY2 else t.as_numpy()
            labels = np.zeros(frames.shape[:3], np.uint8)
            out = (pb_utils.Tensor.from_dlpack("labels", labels) if NUMPY2
                   else pb_utils.Tensor("labels", labels))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
