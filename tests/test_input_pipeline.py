"""tf.data pipelines: determinism, resumption, per-process slices, exact evaluation, RandAugment, ImageNet format."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sot_jax import input_pipeline, randaugment


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_digits_dataset_is_embedded(digits_dir):
    builder = input_pipeline.get_builder("digits", digits_dir)
    splits = builder.info.splits
    assert splits["train"].num_examples + splits["validation"].num_examples == 1797
    assert builder.info.features["label"].num_classes == 10


def test_training_order_is_deterministic_resumable_and_process_independent(digits_dir, tiny_config):
    config = tiny_config(randaugment_layers=2, hflip=True)
    builder = input_pipeline.get_builder("digits", digits_dir)
    epoch = input_pipeline.steps_per_epoch(builder, "train", 8)

    def stream(start=0, index=0, count=1):
        return input_pipeline.train_batches(
            builder, config, global_batch=8, start_step=start, process_index=index, process_count=count
        )

    reference = take(stream(), epoch + 3)  # crosses an epoch boundary
    again = take(stream(), epoch + 3)
    for a, b in zip(reference, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    resumed = take(stream(start=epoch - 1), 4)
    for a, b in zip(reference[epoch - 1 :], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    halves = [take(stream(index=i, count=2), 3) for i in range(2)]
    for step in range(3):
        joined = np.concatenate([halves[0][step]["image"], halves[1][step]["image"]])
        np.testing.assert_array_equal(joined, reference[step]["image"])
    assert not np.array_equal(reference[0]["image"], reference[epoch]["image"])  # a new epoch reshuffles


def test_evaluation_sees_every_example_exactly_once(digits_dir, tiny_config):
    config = tiny_config()
    builder = input_pipeline.get_builder("digits", digits_dir)
    count = builder.info.splits["validation"].num_examples
    for processes in (1, 2):
        labels, masks = [], []
        for index in range(processes):
            batches = list(
                input_pipeline.eval_batches(
                    builder, "validation", config, global_batch=64, process_index=index, process_count=processes
                )
            )
            assert all(b["image"].shape == (64 // processes, 32, 32, 3) for b in batches)
            labels.append(np.concatenate([b["label"] for b in batches]))
            masks.append(np.concatenate([b["mask"] for b in batches]))
        assert sum(int(m.sum()) for m in masks) == count
        seen = np.concatenate([label[mask == 1] for label, mask in zip(labels, masks, strict=True)])
        label_counts = np.bincount(seen, minlength=10)
        expected = np.bincount([int(x["label"]) for x in builder.as_dataset(split="validation")], minlength=10)
        np.testing.assert_array_equal(label_counts, expected)


def test_missing_and_unknown_datasets_say_what_to_do(tmp_path):
    with pytest.raises(input_pipeline.DatasetNotReadyError, match="tfds build imagenet2012 --manual_dir="):
        input_pipeline.get_builder("imagenet2012", str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset 'imagenet2013'"):
        input_pipeline.get_builder("imagenet2013", str(tmp_path))


def test_every_randaugment_operation_runs_and_keeps_shape():
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, size=(24, 20, 3)), tf.uint8)
    for index, name in enumerate(randaugment.OPS):
        out, matrix = randaugment.apply_op(tf.constant(index), image, tf.constant(9.0), tf.constant(1.0))
        assert out.shape == image.shape and out.dtype == tf.uint8, name
        geometric = name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
        assert np.allclose(matrix.numpy(), np.eye(3)) != geometric, name
        if name not in ("AutoContrast", "Equalize"):  # the random image already spans 0..255 (nearly flat histogram)
            assert not np.array_equal(out.numpy(), image.numpy()), name
    # Magnitude 0 leaves the enhancement and geometric operations unchanged.
    for name in ("Color", "Contrast", "Brightness", "Sharpness", "Rotate", "ShearX", "TranslateY"):
        out, _ = randaugment.apply_op(
            tf.constant(randaugment.OPS.index(name)), image, tf.constant(0.0), tf.constant(1.0)
        )
        np.testing.assert_array_equal(out.numpy(), image.numpy(), err_msg=name)
    seed = tf.constant([3, 4], tf.int64)
    (first, first_map), (second, second_map) = (
        randaugment.randaugment(image, seed),
        randaugment.randaugment(image, seed),
    )
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    np.testing.assert_array_equal(first_map.numpy(), second_map.numpy())


def test_rotate_turns_counter_clockwise_like_pil():
    image = np.zeros((21, 21, 3), np.uint8)
    image[10, 15:] = 255  # a bar to the right of the centre
    out, _ = randaugment.apply_op(
        tf.constant(randaugment.OPS.index("Rotate")), tf.constant(image), tf.constant(10.0), tf.constant(1.0)
    )
    reference = np.asarray(Image.fromarray(image).rotate(30.0, resample=Image.BILINEAR, fillcolor=randaugment.FILL))
    assert np.mean(np.abs(out.numpy().astype(int) - reference.astype(int)) > 64) < 0.02


def test_imagenet2012_as_tfds_prepares_it(tiny_imagenet, tiny_config):
    builder = input_pipeline.get_builder("imagenet2012", tiny_imagenet)
    assert builder.info.splits["train"].num_examples == 8
    config = tiny_config(dataset="imagenet2012", image_size=32, randaugment_layers=2, hflip=True)
    batch = next(input_pipeline.train_batches(builder, config, global_batch=4, start_step=0))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert set(batch["label"]) <= {0, 1}  # the two synsets are ImageNet classes 0 and 1
    evaluation = list(input_pipeline.eval_batches(builder, "validation", config, global_batch=4))
    assert sum(int(b["mask"].sum()) for b in evaluation) == 6


def test_a_process_whose_every_eval_slice_is_empty_gets_padding(digits_dir, tiny_config):
    """359 validation digits in one global batch of 1024 over 2 processes: process 1's half is all padding."""
    builder = input_pipeline.get_builder("digits", digits_dir)
    kwargs = dict(global_batch=1024, process_count=2)
    first = list(input_pipeline.eval_batches(builder, "validation", tiny_config(), process_index=0, **kwargs))
    second = list(input_pipeline.eval_batches(builder, "validation", tiny_config(), process_index=1, **kwargs))
    assert len(first) == len(second) == 1
    assert int(first[0]["mask"].sum()) == 359 and int(second[0]["mask"].sum()) == 0
    assert {k: (v.shape, v.dtype) for k, v in second[0].items()} == {k: (v.shape, v.dtype) for k, v in first[0].items()}
