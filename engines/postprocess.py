"""Instance-level clean-up of instrument-type label maps.

A per-pixel classifier often paints most of an instrument with its type and a few patches
with a neighbour's, and leaves specks of some type on tissue. ISINet (González et al. 2020)
showed that deciding the type per instrument instance, not per pixel, is what lifts the
per-class metrics. Here an instance is a connected component of instrument pixels: it takes
the majority type of its pixels, and components too small to be an instrument are dropped.
Runs at the model's resolution (256x320): well under a millisecond.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_AREA_FRACTION = 0.001  # of the label map: 82 px at 256x320, a sliver at the rim


def instance_vote(labels: np.ndarray, num_classes: int,
                  min_area_fraction: float = MIN_AREA_FRACTION) -> np.ndarray:
    """(H, W) uint8 type ids -> same, each connected instrument region a single type."""
    foreground = (labels > 0).astype(np.uint8)
    count, components = cv2.connectedComponents(foreground, connectivity=8)
    if count <= 1:
        return labels
    # votes[c, t]: pixels of component c labelled t, in one bincount over all pixels
    votes = np.bincount(components.ravel().astype(np.int64) * num_classes + labels.ravel(),
                        minlength=count * num_classes).reshape(count, num_classes)
    winner = votes[:, 1:].argmax(axis=1).astype(np.uint8) + 1  # best instrument type
    area = votes.sum(axis=1)
    winner[area < min_area_fraction * labels.size] = 0
    winner[0] = 0  # component 0 is the background
    return winner[components]
