"""`python -m sot_jax.prepare`: converting a TFRecord dataset in place, preparing one as ArrayRecord, and the
one-line errors; on the embedded `digits` dataset (1,797 8x8 images, prepared in seconds)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

from sot_jax import prepare

ROOT = Path(__file__).resolve().parent.parent
SKIP_IMAGE = {"image": tfds.decode.SkipDecoding()}


@pytest.fixture(scope="module")
def tfrecord_data_dir(tmp_path_factory) -> Path:
    """`digits` prepared the old way (TFRecord), as `tfds build` or an older sot_jax left it; copied per test."""
    import sot_jax.data.tfds_builders  # noqa: F401  registers the embedded datasets

    data_dir = tmp_path_factory.mktemp("tfrecord")
    tfds.builder("digits", data_dir=str(data_dir)).download_and_prepare()
    return data_dir


@pytest.fixture
def data_dir(tfrecord_data_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tfrecord_data_dir, tmp_path / "data"))


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Every file under `directory`: its modification time and a hash of its bytes."""
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def run_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sot_jax.prepare", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def check_array_record_matches_tfrecord(directory: Path) -> None:
    """TFDS serves ArrayRecord reads of every split: as many records as the split info says, the same (image
    bytes, label) in the same order as the TFRecord files."""
    builder = tfds.builder_from_directory(str(directory))
    assert builder.info.file_format == file_adapters.FileFormat.TFRECORD  # TF readers keep their format
    assert file_adapters.FileFormat.ARRAY_RECORD in builder.info.available_file_formats()
    for name, split in builder.info.splits.items():
        source = builder.as_data_source(name, decoders=SKIP_IMAGE)
        assert len(source) == split.num_examples
        stored = tfds.builder_from_directory(str(directory)).as_dataset(
            split=name, shuffle_files=False, decoders=SKIP_IMAGE
        )
        expected = [(x["image"], int(x["label"])) for x in stored.as_numpy_iterator()]
        assert [(source[i]["image"], int(source[i]["label"])) for i in range(len(source))] == expected


def test_prepared_directory_reads_the_layout(tmp_path, monkeypatch):
    def version(*parts: str, info: bool = True) -> None:
        (tmp_path.joinpath(*parts)).mkdir(parents=True)
        if info:
            (tmp_path.joinpath(*parts) / "dataset_info.json").write_text("{}")

    version("foo", "1.2.0")
    version("foo", "1.10.0")  # numerically highest prepared
    version("foo", "2.0.0", info=False)  # not prepared
    version("foo", "incomplete.ABC_3.0.0")  # TFDS's unfinished build
    version("glue", "cola", "1.0.0")
    assert prepare.prepared_directory("foo", str(tmp_path)) == tmp_path / "foo" / "1.10.0"
    assert prepare.prepared_directory("foo:1.2.0", str(tmp_path)) == tmp_path / "foo" / "1.2.0"
    assert prepare.prepared_directory("foo:1.*.*", str(tmp_path)) == tmp_path / "foo" / "1.10.0"
    assert prepare.prepared_directory("foo:2.0.0", str(tmp_path)) is None
    assert prepare.prepared_directory("glue/cola", str(tmp_path)) == tmp_path / "glue" / "cola" / "1.0.0"
    assert prepare.prepared_directory("bar", str(tmp_path)) is None
    assert prepare.prepared_directory("foo", str(tmp_path / "empty")) is None
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # data_dir None: TFDS's default
    assert prepare.prepared_directory("foo", None) == tmp_path / "foo" / "1.10.0"


def test_reading_needs_no_tensorflow(data_dir):
    code = (
        "import sys; from sot_jax import prepare\n"
        f"directory = prepare.prepared_directory('digits', {str(data_dir)!r})\n"
        "print(directory.name, prepare.has_array_record(directory), 'tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1.0.0", "False", "False"]


def test_converts_tfrecord_in_place(data_dir, capsys):
    directory = data_dir / "digits" / "1.0.0"
    tfrecords = {k: v for k, v in snapshot(directory).items() if ".tfrecord-" in k}
    assert len(tfrecords) == 2 and not prepare.has_array_record(directory)

    assert prepare.main(["digits", f"--data_dir={data_dir}"]) == 0
    assert "converted digits" in capsys.readouterr().out
    after = snapshot(directory)
    assert {k: v for k, v in after.items() if ".tfrecord-" in k} == tfrecords  # untouched
    assert sorted(k for k in after if ".array_record-" in k) == [
        "digits-train.array_record-00000-of-00001",
        "digits-validation.array_record-00000-of-00001",
    ]
    assert prepare.has_array_record(directory)
    assert prepare.prepared_directory("digits", str(data_dir)) == directory
    check_array_record_matches_tfrecord(directory)

    assert prepare.main(["digits", f"--data_dir={data_dir}"]) == 0  # a second run
    out = capsys.readouterr().out
    assert "already" in out and len(out.splitlines()) == 1
    assert snapshot(directory) == after


def test_command_line_converts(data_dir):
    result = run_command("digits:1.0.0", f"--data_dir={data_dir}")
    assert result.returncode == 0, result.stderr
    assert "converted digits:1.0.0" in result.stdout
    check_array_record_matches_tfrecord(data_dir / "digits" / "1.0.0")


def test_prepares_from_scratch_as_array_record(tmp_path, capsys):
    assert prepare.prepared_directory("digits", str(tmp_path)) is None
    assert prepare.main(["digits", f"--data_dir={tmp_path}"]) == 0
    assert "prepared digits as ArrayRecord" in capsys.readouterr().out
    directory = prepare.prepared_directory("digits", str(tmp_path))
    assert directory == tmp_path / "digits" / "1.0.0"
    assert prepare.has_array_record(directory)
    assert json.loads((directory / "dataset_info.json").read_text())["fileFormat"] == "array_record"
    assert not list(directory.glob("*.tfrecord-*"))
    builder = tfds.builder_from_directory(str(directory))
    for name, split in builder.info.splits.items():
        records = builder.as_data_source(name, decoders=SKIP_IMAGE)
        assert len(records) == split.num_examples
    assert sum(s.num_examples for s in builder.info.splits.values()) == 1797
    assert prepare.main(["digits", f"--data_dir={tmp_path}"]) == 0
    assert "already" in capsys.readouterr().out


def test_unknown_name_is_one_error_line(tmp_path):
    result = run_command("no_such_dataset", f"--data_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: unknown dataset 'no_such_dataset': Dataset no_such_dataset not found."]
    assert "Traceback" not in result.stderr


def test_missing_shard_is_named(data_dir, capsys):
    directory = data_dir / "digits" / "1.0.0"
    shard = directory / "digits-validation.tfrecord-00000-of-00001"
    shard.unlink()
    before = snapshot(directory)
    assert prepare.main(["digits", f"--data_dir={data_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert str(shard) in err
    assert snapshot(directory) == before  # nothing converted, nothing recorded


def test_interrupted_conversion_leaves_no_half_shard(data_dir, monkeypatch, capsys):
    directory = data_dir / "digits" / "1.0.0"
    before = snapshot(directory)
    adapter = file_adapters.ADAPTER_FOR_FORMAT[file_adapters.FileFormat.ARRAY_RECORD]
    write = adapter.write_examples

    def interrupted(path, iterator):
        write(path, (record for _, record in zip(range(10), iterator, strict=False)))  # a partial file
        raise KeyboardInterrupt

    monkeypatch.setattr(adapter, "write_examples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.main(["digits", f"--data_dir={data_dir}"])
    assert snapshot(directory) == before  # no shard under its final name, no leftover, dataset_info.json as it was
    monkeypatch.undo()
    assert prepare.main(["digits", f"--data_dir={data_dir}"]) == 0  # rerunning completes it
    assert "converted" in capsys.readouterr().out
    check_array_record_matches_tfrecord(directory)


def test_imagenet_needs_manual_dir(tmp_path, capsys):
    assert prepare.main(["imagenet2012", f"--data_dir={tmp_path}"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--manual_dir" in errors[0] and "ILSVRC2012_img_train.tar" in errors[0]
    assert not list(tmp_path.rglob("dataset_info.json"))
