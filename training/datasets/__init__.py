"""Dataset loaders for training (EndoVis 2017/2018 layouts)."""

from orstream.training.datasets.endovis import (
    STANDARD_CROP,
    TERNAUSNET_FOLDS,
    DatasetError,
    Sample,
    detect_layout,
    discover,
    load_sample,
    read_image,
    read_label,
    split_by_fold,
    standard_crop,
    validate,
)

__all__ = [
    "STANDARD_CROP",
    "TERNAUSNET_FOLDS",
    "DatasetError",
    "Sample",
    "detect_layout",
    "discover",
    "load_sample",
    "read_image",
    "read_label",
    "split_by_fold",
    "standard_crop",
    "validate",
]
