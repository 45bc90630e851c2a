"""Shared fixtures: the embedded digits dataset prepared once per session, small training configs, and the helpers
several test files use (trees compared, the command line run, a reference training run)."""

import importlib
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from sot_jax import checkpoints, experiment, train

ROOT = Path(__file__).resolve().parent.parent


def load_config(path: str, variant: str):
    spec = importlib.util.spec_from_file_location("config_module", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def assert_same(ours, theirs, keys=("input_ids", "attention_mask", "token_type_ids"), rows=None):
    """The arrays under `keys` of two batches are equal (on `rows` only, when given)."""
    for key in keys:
        a, b = ours[key], theirs[key]
        if rows is not None:
            a, b = a[rows], b[rows]
        np.testing.assert_array_equal(a, b, err_msg=key)


def write_glue(root: str, splits: dict, words, examples: int) -> None:
    """GLUE tasks ({task: split names}) as `python -m sot_jax.prepare` leaves them (ArrayRecord shards under TFDS's
    names and metadata), `examples` per split serialized by TFDS's own features from sentences of `words`: test
    splits with GLUE's hidden labels (-1), STS-B's float scores, `idx` from 100."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    rng = np.random.default_rng(0)
    for config, split_names in splits.items():
        builder = tfds.builder(f"glue/{config}", data_dir=root, file_format="array_record")
        features = builder.info.features
        infos = []
        for split in split_names:
            serialized = []
            for index in range(examples):
                if split.startswith("test"):
                    label = -1
                elif config == "stsb":
                    label = float(np.round(rng.uniform(0, 5), 2))
                else:
                    label = int(rng.integers(features["label"].num_classes))
                example = {"idx": 100 + index, "label": label}
                for key in features:
                    if key not in example:
                        example[key] = " ".join(rng.choice(words, size=int(rng.integers(3, 8))))
                serialized.append((index, features.serialize_example(example)))
            path = Path(builder.data_dir) / f"glue-{split}.array_record-00000-of-00001"
            path.parent.mkdir(parents=True, exist_ok=True)
            file_adapters.ArrayRecordFileAdapter.write_examples(path, iter(serialized))
            infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[examples], num_bytes=0))
        builder.info.set_splits(tfds.core.SplitDict(infos))
        builder.info.write_to_directory(builder.data_dir)


def _skip_torchvision_fake_ops() -> None:
    """torchvision from PyPI fails to register its fake ops against this CPU torch build (`operator torchvision::nms
    does not exist`, SPEC §9), and timm and transformers import it. None of those ops is used in these tests, so
    their registration is skipped; everything else registers as before."""
    import torch

    register_fake = torch.library.register_fake

    def skipping(name, *args, **kwargs):
        if str(name).startswith("torchvision::"):
            return lambda function: function
        return register_fake(name, *args, **kwargs)

    torch.library.register_fake = skipping


if importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None:
    _skip_torchvision_fake_ops()


def import_timm(module: str):
    """`timm.data.<module>` (timm 0.4.5: its data code equals 0.3.4's, the SoT scripts'), or skip without timm."""
    pytest.importorskip("timm")
    return importlib.import_module(f"timm.data.{module}")


def timm_fixture() -> dict:
    """tests/fixtures/timm_transforms.npz (timm 0.4.5's transforms on fixed inputs, make_timm_fixtures.py), or skip
    where Pillow is another version than the one that made it (its resampling arithmetic changes between
    versions)."""
    import PIL

    with np.load(ROOT / "tests" / "fixtures" / "timm_transforms.npz") as data:
        fixture = dict(data)
    if str(fixture["pillow"]) != PIL.__version__:
        pytest.skip(f"timm fixtures made with Pillow {fixture['pillow']}, this is Pillow {PIL.__version__}")
    return fixture


# A DeiT small enough that a CPU step takes milliseconds.
TINY_MODEL = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_hidden": 64}


def tiny_overrides() -> list[str]:
    """The same small model as command-line flags for configs/sot_deit.py:digits."""
    flags = ["--config.model.name=deit_tiny_patch16_224"]
    return flags + [f"--config.model.{k}={v}" for k, v in TINY_MODEL.items()]


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
    from sot_jax.data import sources

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    sources.get_source("digits", data_dir)  # prepares it
    return data_dir


CONFIG_GROUPS = ("model", "input", "aug", "optim")


def set_config(config, key, value):
    """Set `key` ("group.key", a top-level key, or a key of exactly one group) to `value`."""
    if "." not in key and key not in config:
        groups = [g for g in CONFIG_GROUPS if key in config[g]]
        assert len(groups) == 1, f"{key} is in groups {groups}"
        key = f"{groups[0]}.{key}"
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
        target = target[parent]
    target[leaf] = value


@pytest.fixture
def tiny_config(digits_dir):
    """configs/sot_deit.py:digits with a tiny DeiT, batch 8, and a few steps; keys as in `set_config`."""

    def make(**changes):
        config = load_config("configs/sot_deit.py", "digits")
        config.data_dir = digits_dir
        config.model.name = "deit_tiny_patch16_224"
        config.model.update(TINY_MODEL)
        config.batch_size = 8
        config.total_steps = 6
        config.log_every_steps = 1
        config.eval_every_steps = 3
        config.checkpoint_every_steps = 3
        config.eval_batch_size = 64
        config.input.workers = 0  # worker processes take seconds to start; tests that need them set them
        for key, value in changes.items():
            set_config(config, key, value)
        return config

    return make


def write_tiny_imagenet(manual_dir, synsets=("n01440764", "n01443537"), per_class=4, val=6):
    """ILSVRC2012_img_{train,val}.tar with the official layout (one inner tar per synset), random JPEGs."""
    rng = np.random.default_rng(0)

    def jpeg(seed):
        pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG")
        return buffer.getvalue()

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(manual_dir / "ILSVRC2012_img_train.tar", "w") as outer:
        for synset in synsets:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(per_class):
                    add(tar, f"{synset}_{i}.JPEG", jpeg(int(rng.integers(1 << 30))))
            add(outer, f"{synset}.tar", inner.getvalue())
    with tarfile.open(manual_dir / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(1, val + 1):
            add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", jpeg(i))


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory):
    """imagenet2012 prepared by TFDS's real builder from the official tars, as ArrayRecord."""
    from sot_jax import prepare

    manual = tmp_path_factory.mktemp("manual")
    write_tiny_imagenet(manual)
    data_dir = str(tmp_path_factory.mktemp("imagenet_tfds"))
    prepare.prepare_dataset("imagenet2012", data_dir, str(manual))
    return data_dir


def params_of(workdir) -> dict:
    return checkpoints.read_init_variables(str(workdir))


def assert_trees_close(a, b, rtol=0.0, atol=0.0):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def run_main(args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sot_jax.main", "--config=configs/sot_deit.py:digits", *tiny_overrides(), *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600, **kwargs,
    )  # fmt: skip


def common_flags(digits_dir, workdir):
    return [
        f"--workdir={workdir}", f"--config.data_dir={digits_dir}", "--config.batch_size=8", "--config.total_steps=3",
        "--config.eval_every_steps=3", "--config.checkpoint_every_steps=3", "--config.aug.mixup=0.8",
        "--config.aug.cutmix=1.0", "--config.aug.random_erasing=0.25",
    ]  # fmt: skip


def reference_run(tiny_config, workdir, **changes):
    config = tiny_config(total_steps=3, mixup=0.8, cutmix=1.0, random_erasing=0.25, **changes)
    return train.train_and_evaluate(experiment.build(config), workdir)


# Pallas kernels in interpret mode (test_dense_kernel.py, test_fused_attention.py): interpret mode turns each
# kernel into a large XLA loop; unoptimized CPU code compiles ~2× faster and runs the tests' tiny shapes in
# milliseconds anyway.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def value_and_vjp(fn, *args):
    """fn(*args) and its vjp with a fixed random cotangent, in one jitted call (one compilation)."""

    def run(*args):
        y, vjp = jax.vjp(fn, *args)
        dy = jax.random.normal(jax.random.key(1), y.shape, np.float32).astype(y.dtype)
        return y, vjp(dy)

    options = _FAST_COMPILE if jax.default_backend() == "cpu" else None
    return jax.jit(run).lower(*args).compile(options)(*args)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
