"""Instance-level clean-up of instrument-type label maps.

A per-pixel classifier often paints most of an instrument with its type and a few patches
with a neighbour's, and leaves specks of some type on tissue. ISINet (González et al. 2020)
showed that deciding the type per instrument instance, not per pixel, is what lifts the
per-class metrics. Here an instance is a connected component of instrument pixels: when one
type holds most of it (`dominance`), the whole component takes that type; when no type
dominates, the component is most likely two touching instruments and keeps its per-pixel
types. Components too small to be an instrument are dropped. Runs at the model's
resolution (256x320): well under a millisecond.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_AREA_FRACTION = 0.001  # of the label map: 82 px at 256x320, a sliver at the rim
# Measured on the held-out synthetic set (engines/weights/README.md): 0.6 keeps touching
# instruments apart (Ch_IoU 0.72 against 0.59 when every component is voted) for a small
# cost in mc_IoU (0.46 against 0.50).
DOMINANCE = 0.6


def instance_vote(labels: np.ndarray, num_classes: int,
                  min_area_fraction: float = MIN_AREA_FRACTION,
                  dominance: float = DOMINANCE) -> np.ndarray:
    """(H, W) uint8 type ids -> same, each clearly single instrument a single type."""
    foreground = (labels > 0).astype(np.uint8)
    count, components = cv2.connectedComponents(foreground, connectivity=8)
    if count <= 1:
        return labels
    # votes[c, t]: pixels of component c labelled t, in one bincount over all pixels
    votes = np.bincount(components.ravel().astype(np.int64) * num_classes + labels.ravel(),
                        minlength=count * num_classes).reshape(count, num_classes)
    area = votes.sum(axis=1)
    winner = votes[:, 1:].argmax(axis=1).astype(np.uint8) + 1  # best instrument type
    share = votes[:, 1:].max(axis=1) / np.maximum(area, 1)
    out = winner[components]
    mixed = (share < dominance)[components]
    out[mixed] = labels[mixed]
    dropped = area < min_area_fraction * labels.size
    dropped[0] = True  # component 0 is the background
    out[dropped[components]] = 0
    return out
