"""Grain pipelines: determinism, resumption, per-process and per-worker independence, mixing groups, exact
evaluation, bad files and dead workers, ImageNet format, no TensorFlow at training time."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from sot_jax import recipes
from sot_jax.data import pipeline, source_base, sources
from sot_jax.errors import UserError


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_digits_dataset_is_embedded(digits_dir):
    source = sources.get_source("digits", digits_dir)
    assert source.num_examples("train") + source.num_examples("validation") == 1797
    assert source.num_classes == 10


def test_training_order_is_deterministic_resumable_and_process_and_worker_independent(digits_dir, tiny_config):
    config = tiny_config(randaugment_layers=2, hflip=True, workers=0)
    source = sources.get_source("digits", digits_dir)
    epoch = pipeline.steps_per_epoch(source, "train", 8)

    def stream(start=0, index=0, count=1):
        return pipeline.train_batches(
            source, config.input, image_size=32, seed=0, global_batch=8, start_step=start, process_index=index,
            process_count=count,
        )  # fmt: skip

    reference = take(stream(), epoch + 3)  # crosses an epoch boundary
    config.input.workers = 2  # worker processes build whole batches, handed back in order
    again = take(stream(), epoch + 3)
    config.input.workers = 0
    for a, b in zip(reference, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    batches = stream(start=epoch - 1)
    resumed = take(batches, 2)
    assert batches.snapshot().get_state() == {"step": epoch + 1}  # what the checkpoint saves
    restored = stream()
    restored.set_state(batches.get_state())
    resumed += take(restored, 2)
    for a, b in zip(reference[epoch - 1 :], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    halves = [take(stream(index=i, count=2), 3) for i in range(2)]
    for step in range(3):
        joined = np.concatenate([halves[0][step]["image"], halves[1][step]["image"]])
        np.testing.assert_array_equal(joined, reference[step]["image"])
    assert not np.array_equal(reference[0]["image"], reference[epoch]["image"])  # a new epoch reshuffles


def test_repeated_copies_go_to_different_mixing_groups_as_rasampler_deals_them(digits_dir, tiny_config):
    config = tiny_config(repeated_aug=3, randaugment_layers=0, workers=0)
    source = sources.get_source("digits", digits_dir)
    batches = pipeline.train_batches(source, config.input, image_size=8, seed=1, global_batch=12, start_step=0,
                                     group_size=4)  # fmt: skip
    images = next(batches)["image"].reshape(3, 4, -1)  # 3 groups of 4
    # RASampler: the stream's entry k goes to replica k mod 3; an image's 3 copies are consecutive entries.
    np.testing.assert_array_equal(pipeline.group_positions(12, 4), [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11])
    assert sum(int(np.array_equal(a, b)) for a in images[0] for b in images[0]) == 4  # no copy within a group
    assert np.array_equal(pipeline.group_positions(8, 0), np.arange(8))


@pytest.mark.slow
def test_training_from_tfds_or_folders_never_imports_tensorflow(tiny_imagenet, tmp_path):
    """TensorFlow is needed to prepare a TFDS dataset, never to train from one (nor from image folders): a training
    step, its checkpoint and an evaluation leave TensorFlow unimported."""
    root = write_image_folders(tmp_path / "folders", per_class=2, val=1)
    script = (
        "import sys\n"
        "from sot_jax import experiment, recipes, train\n"
        f"for name, data_dir in (('imagenet2012', {tiny_imagenet!r}), ('folder', {str(root)!r})):\n"
        "    config = recipes.digits_demo(recipes.base_config(), 'deit_tiny_patch16_224', embed_dim=16, depth=1)\n"
        "    config.dataset, config.data_dir, config.batch_size, config.total_steps = name, data_dir, 2, 1\n"
        "    config.input.workers = 0\n"
        f"    train.train_and_evaluate(experiment.build(config), {str(tmp_path)!r} + '/' + name)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
    for name in ("imagenet2012", "folder"):
        assert (tmp_path / name / "checkpoints" / "1").is_dir() and (tmp_path / name / "metrics.jsonl").is_file()


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
        expected = np.bincount(source.labels("validation"), minlength=10)
        np.testing.assert_array_equal(label_counts, expected)


def test_missing_unknown_and_tfrecord_datasets_say_what_to_do(tmp_path):
    command = f"python -m sot_jax.prepare imagenet2012 --data_dir={tmp_path} --manual_dir="
    with pytest.raises(source_base.DatasetNotReadyError, match=command):
        sources.get_source("imagenet2012", str(tmp_path))
    import tensorflow_datasets as tfds

    from sot_jax.data import tfds_builders  # noqa: F401  registers the embedded datasets

    tfds.builder("digits", data_dir=str(tmp_path)).download_and_prepare()  # TFRecord, TFDS's default
    command = f"python -m sot_jax.prepare digits --data_dir={tmp_path}"
    with pytest.raises(source_base.DatasetNotReadyError, match=f"TFRecord only.*{command}"):
        sources.get_source("digits", str(tmp_path), prepare_embedded=False)
    assert sources.get_source("digits", str(tmp_path)).num_examples("train") > 0  # embedded: converted on first use
    with pytest.raises(ValueError, match="unknown dataset 'imagenet2013'"):
        sources.get_source("imagenet2013", str(tmp_path))


def test_imagenet2012_as_tfds_prepares_it(tiny_imagenet, tiny_config):
    source = sources.get_source("imagenet2012", tiny_imagenet)
    assert source.num_examples("train") == 8
    config = tiny_config(dataset="imagenet2012", randaugment_layers=2, hflip=True)
    config.input.workers = 0
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
    config = recipes.base_config().input
    config.update({"crop_scale": (1.0, 1.0), "crop_ratio": (1.2, 1.2), "hflip": False, "randaugment_layers": 0,
                   "interpolation": "bicubic", "workers": 0})  # fmt: skip

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


def test_a_file_that_does_not_decode_stops_naming_it_or_is_replaced(tmp_path, capfd):
    root = write_image_folders(tmp_path / "data", per_class=2, val=2)
    bad = root / "val" / "b_cat" / "1.png"
    bad.write_bytes(b"truncated")
    source = sources.get_source("folder", str(root))
    kwargs = dict(image_size=16, crop_pct=1.0, global_batch=2)
    with pytest.raises(UserError, match=f"cannot read or decode image {bad}; .*skip_bad_images=True"):
        list(pipeline.eval_batches(source, "val", **kwargs))
    batches = list(pipeline.eval_batches(source, "val", skip_bad_images=True, **kwargs))
    assert sum(int(b["mask"].sum()) for b in batches) == 5  # left out of the scores
    assert f"skipped unreadable image {bad}" in capfd.readouterr().err

    config = recipes.base_config().input
    config.update({"train_split": "val", "workers": 1, "randaugment_layers": 0})
    with pytest.raises(UserError, match=f"cannot read or decode image {bad}"):  # raised in a worker process
        take(pipeline.train_batches(source, config, image_size=8, seed=0, global_batch=6, start_step=0), 2)
    config.update({"workers": 0, "skip_bad_images": True})
    batch = next(pipeline.train_batches(source, config, image_size=8, seed=0, global_batch=6, start_step=0))
    assert len(batch["label"]) == 6 and f"skipped unreadable image {bad}" in capfd.readouterr().err  # batch stays whole


class _Dies:
    def __call__(self, step):
        os._exit(3)


def test_a_worker_that_dies_stops_the_run_with_one_line():
    batches = pipeline.TrainBatches(_Dies(), 5, workers=1)
    with pytest.raises(UserError, match="an input worker process died while making batch 5 .*exit code 3"):
        next(batches)


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
