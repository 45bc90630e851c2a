"""`digits`: scikit-learn's bundled handwritten digits as a TFDS dataset, prepared on first use without download.

1,797 grayscale 8×8 images (values 0–16, scaled to 0–255) of the digits 0–9 from the UCI ML hand-written digits
set. A fixed, class-stratified permutation puts 1,437 images in `train` and 360 in `validation`.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

VALIDATION_FRACTION = 0.2


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits (8×8, 10 classes)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
        labels = digits.target.astype(np.int64)
        order = np.random.default_rng(0).permutation(len(labels))
        is_validation = np.zeros(len(labels), bool)
        for label in range(10):  # stratified: the same fraction of each class in validation
            members = order[labels[order] == label]
            is_validation[members[: int(round(VALIDATION_FRACTION * len(members)))]] = True
        return {
            "train": self._generate_examples(images, labels, np.flatnonzero(~is_validation)),
            "validation": self._generate_examples(images, labels, np.flatnonzero(is_validation)),
        }

    def _generate_examples(self, images, labels, indices):
        for index in indices:
            yield int(index), {"image": images[index], "label": int(labels[index])}
