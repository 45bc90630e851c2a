"""`digits`: scikit-learn's bundled handwritten digits as a TFDS dataset, prepared on first use without download
(its builder is `tfds_builders.Digits`).

1,797 grayscale 8×8 images (values 0–16, scaled to 0–255) of the digits 0–9 from the UCI ML hand-written digits
set. A fixed, class-stratified permutation puts 1,438 images in `train` and 359 in `validation`.
"""

from __future__ import annotations

import numpy as np

VALIDATION_FRACTION = 0.2


def generate() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The images (uint8, (1797, 8, 8, 1)), their labels (int64) and each split's indices."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    is_validation = np.zeros(len(labels), bool)
    for label in range(10):  # stratified: the same fraction of each class in validation
        members = order[labels[order] == label]
        is_validation[members[: int(round(VALIDATION_FRACTION * len(members)))]] = True
    return images, labels, {"train": np.flatnonzero(~is_validation), "validation": np.flatnonzero(is_validation)}
