"""In-memory segmentation sets: decode each sample once, resize to the model size, keep uint8.

EndoVis PNGs at 1080p take tens of milliseconds to decode; an epoch re-reading them would
spend more time in zlib than in the model on two cores. A 256x320 uint8 copy of 1800 frames
is about 450 MB, so they are decoded once, in threads (OpenCV releases the GIL).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from orstream.common.classes import Task
from orstream.engines.preprocess import resize_image, resize_labels
from orstream.training.augment import AugmentConfig, augment
from orstream.training.datasets.endovis import Sample, load_sample


def load_arrays(samples: list[Sample], task: Task, size: tuple[int, int], workers: int = 2,
                desc: str = "loading") -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 images and (N, H, W) uint8 labels at `size`, in sample order."""
    h, w = size
    images = np.empty((len(samples), h, w, 3), np.uint8)
    labels = np.empty((len(samples), h, w), np.uint8)

    def one(i: int) -> int:
        image, label = load_sample(samples[i], task)
        images[i] = resize_image(image, size)
        labels[i] = resize_labels(label, size)
        return i

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in tqdm(pool.map(one, range(len(samples))), total=len(samples), desc=desc,
                      unit="frame", leave=False):
            pass
    return images, labels


class SegmentationSet(torch.utils.data.Dataset):
    """uint8 arrays in memory -> (image (H, W, 3) uint8 tensor, label (H, W) int64 tensor).

    With `augment`, each item is a fresh random transform of its frame, cropped to `crop`
    (training on crops at full scale is 4x cheaper than whole frames and the network, being
    fully convolutional, is then run on whole frames unchanged).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray,
                 augment_cfg: AugmentConfig | None = None, crop: tuple[int, int] | None = None,
                 seed: int = 0) -> None:
        self.images, self.labels = images, labels
        self.augment_cfg = augment_cfg
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.images[i], self.labels[i]
        if self.augment_cfg is not None:
            image, label = augment(image, label, self.rng, self.augment_cfg, self.crop)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(
            label.astype(np.int64))
