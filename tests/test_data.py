"""tf.data pipelines: determinism, resumption, per-process slices, exact evaluation, RandAugment, ImageNet format."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sot_jax.data import pipeline, randaugment, sources


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_digits_dataset_is_embedded(digits_dir):
    source = sources.get_source("digits", digits_dir)
    assert source.num_examples("train") + source.num_examples("validation") == 1797
    assert source.num_classes == 10


def test_training_order_is_deterministic_resumable_and_process_independent(digits_dir, tiny_config):
    config = tiny_config(randaugment_layers=2, hflip=True)
    source = sources.get_source("digits", digits_dir)
    epoch = pipeline.steps_per_epoch(source, "train", 8)

    def stream(start=0, index=0, count=1):
        return pipeline.train_batches(
            source, config.input, image_size=32, seed=0, global_batch=8, start_step=start, process_index=index,
            process_count=count,
        )  # fmt: skip

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
    source = sources.get_source("digits", digits_dir)
    count = source.num_examples("validation")
    for processes in (1, 2):
        labels, masks = [], []
        for index in range(processes):
            batches = list(
                pipeline.eval_batches(
                    source, "validation", image_size=32, crop_pct=config.input.eval_crop_pct, global_batch=64,
                    process_index=index, process_count=processes,
                )
            )  # fmt: skip
            assert all(b["image"].shape == (64 // processes, 32, 32, 3) for b in batches)
            labels.append(np.concatenate([b["label"] for b in batches]))
            masks.append(np.concatenate([b["mask"] for b in batches]))
        assert sum(int(m.sum()) for m in masks) == count
        seen = np.concatenate([label[mask == 1] for label, mask in zip(labels, masks, strict=True)])
        label_counts = np.bincount(seen, minlength=10)
        expected = np.bincount([int(x["label"]) for x in source.builder.as_dataset(split="validation")], minlength=10)
        np.testing.assert_array_equal(label_counts, expected)


def test_missing_and_unknown_datasets_say_what_to_do(tmp_path):
    with pytest.raises(sources.DatasetNotReadyError, match="tfds build imagenet2012 --manual_dir="):
        sources.get_source("imagenet2012", str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset 'imagenet2013'"):
        sources.get_source("imagenet2013", str(tmp_path))


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
    source = sources.get_source("imagenet2012", tiny_imagenet)
    assert source.num_examples("train") == 8
    config = tiny_config(dataset="imagenet2012", randaugment_layers=2, hflip=True)
    batch = next(pipeline.train_batches(source, config.input, image_size=32, seed=0, global_batch=4, start_step=0))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert set(batch["label"]) <= {0, 1}  # the two synsets are ImageNet classes 0 and 1
    evaluation = list(pipeline.eval_batches(source, "validation", image_size=32, crop_pct=0.875, global_batch=4))
    assert sum(int(b["mask"].sum()) for b in evaluation) == 6


def test_a_process_whose_every_eval_slice_is_empty_gets_padding(digits_dir):
    """359 validation digits in one global batch of 1024 over 2 processes: process 1's half is all padding."""
    source = sources.get_source("digits", digits_dir)
    kwargs = dict(image_size=32, crop_pct=1.0, global_batch=1024, process_count=2)
    first = list(pipeline.eval_batches(source, "validation", process_index=0, **kwargs))
    second = list(pipeline.eval_batches(source, "validation", process_index=1, **kwargs))
    assert len(first) == len(second) == 1
    assert int(first[0]["mask"].sum()) == 359 and int(second[0]["mask"].sum()) == 0
    assert {k: (v.shape, v.dtype) for k, v in second[0].items()} == {k: (v.shape, v.dtype) for k, v in first[0].items()}


def write_image_folders(root, classes=("b_cat", "a_dog", "c_eel"), per_class=4, val=2, size=(20, 24)):
    """An ImageFolder tree: root/{train,val}/<class>/<i>.png|jpg, each image a flat colour that encodes its class."""
    for split, count in (("train", per_class), ("val", val)):
        for index, name in enumerate(sorted(classes)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.full((*size, 3), 40 * index + 20, np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_folders_read_in_imagefolder_order_with_resumable_slices(tmp_path):
    root = write_image_folders(tmp_path / "imagenet")
    (root / "train" / "a_dog" / "notes.txt").write_text("not an image")  # ignored, as by ImageFolder
    source = sources.get_source("folder", str(root))
    assert source.classes == ["a_dog", "b_cat", "c_eel"] and source.num_classes == 3  # sorted folder names
    assert source.num_examples("train") == 12 and source.eval_split == "val"
    np.testing.assert_array_equal(np.bincount(source.labels("val")), [2, 2, 2])
    config = {"train_split": "train", "crop_scale": (1.0, 1.0), "crop_ratio": (1.2, 1.2), "hflip": False,
              "randaugment_layers": 0, "randaugment_magnitude": 9.0, "randaugment_std": 0.5, "repeated_aug": 1,
              "token_label_dir": "", "skip_bad_images": False, "interpolation": "bicubic"}  # fmt: skip
    import ml_collections

    config = ml_collections.ConfigDict(config)

    def stream(start=0, index=0, count=1):
        return pipeline.train_batches(
            source, config, image_size=16, seed=3, global_batch=4, start_step=start, process_index=index,
            process_count=count,
        )  # fmt: skip

    reference = take(stream(), 5)  # 3 steps per epoch: crosses into the second epoch
    for batch in reference:  # each image's colour is its class: labels follow the sorted class order
        np.testing.assert_array_equal(batch["image"][:, 8, 8, 0] // 40, batch["label"])
    for a, b in zip(reference[2:], take(stream(start=2), 3), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    halves = [take(stream(index=i, count=2), 2) for i in range(2)]
    for step in range(2):
        joined = np.concatenate([halves[0][step]["label"], halves[1][step]["label"]])
        np.testing.assert_array_equal(joined, reference[step]["label"])
    evaluation = list(pipeline.eval_batches(source, "val", image_size=16, crop_pct=1.0, global_batch=4))
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in evaluation])
    np.testing.assert_array_equal(np.sort(labels), [0, 0, 1, 1, 2, 2])


def test_a_file_that_does_not_decode_stops_naming_it_or_is_skipped(tmp_path, capsys):
    root = write_image_folders(tmp_path / "data", per_class=2, val=2)
    bad = root / "val" / "b_cat" / "1.png"
    bad.write_bytes(b"truncated")
    source = sources.get_source("folder", str(root))
    kwargs = dict(image_size=16, crop_pct=1.0, global_batch=2)
    with pytest.raises(ValueError, match=f"cannot read or decode image {bad}"):
        list(pipeline.eval_batches(source, "val", **kwargs))
    batches = list(pipeline.eval_batches(source, "val", skip_bad_images=True, **kwargs))
    assert sum(int(b["mask"].sum()) for b in batches) == 5
    assert f"skipped unreadable image {bad} (1 skipped so far)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: (root / "train").mkdir(parents=True), r"data/train has no class folders"),
        (lambda root: (root / "train" / "a").mkdir(parents=True), r"class folder .*train/a holds no images"),
    ],
)
def test_folder_layout_errors_name_the_problem(tmp_path, change, message):
    root = tmp_path / "data"
    change(root)
    with pytest.raises(ValueError, match=message):
        sources.get_source("folder", str(root))


def test_folder_splits_must_share_their_classes(tmp_path):
    root = write_image_folders(tmp_path / "data", per_class=1, val=1)
    (root / "val" / "c_eel").rename(root / "val" / "d_fox")
    source = sources.get_source("folder", str(root))
    with pytest.raises(ValueError, match="classes of .*val differ .*missing: c_eel; extra: d_fox"):
        source.num_examples("val")
    with pytest.raises(ValueError, match=r"data/test does not exist .*folders there: train, val"):
        source.num_examples("test")
