"""TFDS builders of the embedded datasets (`digits`, `brackets`): imported to prepare them (`sot_jax.prepare`),
never to read them, so that training needs neither TensorFlow nor these definitions."""

from __future__ import annotations

import tensorflow_datasets as tfds

from sot_jax.data import brackets, digits


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
        images, labels, splits = digits.generate()
        return {split: self._generate_examples(images, labels, indices) for split, indices in splits.items()}

    def _generate_examples(self, images, labels, indices):
        for index in indices:
            yield int(index), {"image": images[index], "label": int(labels[index])}


class Brackets(tfds.core.GeneratorBasedBuilder):
    """Generated bracket sentences, well-formed (1) or corrupted by one edit (0)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Two bracket pairs, 4–16 tokens, 8,000 train sentences."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "sentence": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["unacceptable", "acceptable"]),
                }
            ),
            supervised_keys=("sentence", "label"),
        )

    def _split_generators(self, dl_manager):
        splits = brackets.generate()
        return {split: self._generate_examples(examples) for split, examples in splits.items()}

    def _generate_examples(self, examples):
        for index, (sentence, label) in enumerate(examples):
            yield index, {"sentence": sentence, "label": label}
