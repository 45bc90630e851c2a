"""Prepare a TFDS dataset as ArrayRecord, the format training reads (through Grain, without TensorFlow).

    python -m sot_jax.prepare NAME --data_dir=DIR [--manual_dir=DIR]

- NAME not prepared in DIR: TFDS prepares it as ArrayRecord in DIR/NAME/VERSION (imagenet2012 needs
  `--manual_dir` holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar; `digits` and `brackets`, embedded in
  sot_jax, need nothing).
- NAME prepared as TFRecord (by `tfds build` or an older sot_jax): converted in place. Each TFRecord shard gets an
  ArrayRecord shard with the same examples in the same order, then dataset_info.json lists ArrayRecord as an
  alternative format. The TFRecord files and `fileFormat` stay, so TensorFlow readers keep working.
- NAME already has ArrayRecord: says so and changes nothing.

NAME is as TFDS spells it: `imagenet2012`, `glue/cola` (a config), `digits:1.0.0` (a version; without one, the
highest prepared version). DIR defaults to $TFDS_DATA_DIR, else ~/tensorflow_datasets. Problems the user can fix
end with one `error: ...` line (exit status 2).

`prepared_directory` and `has_array_record` read dataset_info.json without TensorFlow, for code that only reads.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from sot_jax.errors import UserError

PREPARE_COMMAND = "python -m sot_jax.prepare {name} --data_dir={data_dir}"
ARRAY_RECORD = "array_record"
TFRECORD = "tfrecord"
INFO_FILE = "dataset_info.json"
# Shipped in sot_jax.data and prepared on first use; their builders (sot_jax.data.tfds_builders) are registered
# with TFDS only to prepare them.
EMBEDDED_DATASETS = ("digits", "brackets")
# Files that ImageNet's builder needs in the manual dir (it would quietly build just the splits whose tar it finds).
IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
# A conversion writes each shard under this suffix and renames it when complete.
INCOMPLETE_SUFFIX = ".incomplete"

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_VERSION_PATTERN = re.compile(r"^[\d*]+\.[\d*]+\.[\d*]+$")  # TFDS also accepts wildcards, e.g. 1.*.*


def default_data_dir() -> str:
    """TFDS's default data dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def _resolve(data_dir: str | None) -> str:
    # Passed to TFDS too, which reads $TFDS_DATA_DIR once at import: both then look in the same place.
    return os.path.expanduser(data_dir or default_data_dir())


def _split_name(name: str) -> tuple[str, str | None]:
    """`name[/config][:version]` -> (`name[/config]`, version or None)."""
    base, colon, version = name.rpartition(":")
    if colon and _VERSION_PATTERN.match(version):
        return base, version
    return name, None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _matches(version: str, pattern: str) -> bool:
    return all(p in ("*", v) for v, p in zip(version.split("."), pattern.split("."), strict=True))


def prepared_directory(name: str, data_dir: str | None) -> Path | None:
    """The version directory of dataset `name` in `data_dir` (None: TFDS's default) as TFDS lays it out,
    DATA_DIR/NAME[/CONFIG]/VERSION: the version `name` asks for, else the highest one that has a dataset_info.json;
    None when there is none. Reads only the file system (no TensorFlow).

    A dataset with configs is found only under the config named (`glue/cola`, not `glue`)."""
    base, wanted = _split_name(name)
    root = Path(_resolve(data_dir)) / base
    if not base or not root.is_dir():
        return None
    # TFDS builds in DATA_DIR/NAME/incomplete.XXXX_VERSION and renames when done: only complete versions match.
    versions = [
        entry.name
        for entry in root.iterdir()
        if _VERSION.match(entry.name)
        and (entry / INFO_FILE).is_file()
        and (wanted is None or _matches(entry.name, wanted))
    ]
    return root / max(versions, key=_version_key) if versions else None


def _read_info(directory: Path) -> dict[str, Any]:
    with open(directory / INFO_FILE) as f:
        return json.load(f)


def _file_formats(info: dict[str, Any]) -> list[str]:
    # Datasets prepared before TFDS recorded `fileFormat` are TFRecord.
    return [info.get("fileFormat") or TFRECORD, *info.get("alternativeFileFormats", [])]


def has_array_record(directory: Path) -> bool:
    """Whether the prepared dataset in `directory` (a version directory) is available as ArrayRecord, prepared so
    or converted (read from dataset_info.json, which a conversion updates only once every shard is written)."""
    return ARRAY_RECORD in _file_formats(_read_info(Path(directory)))


def _register_embedded(name: str) -> None:
    if _split_name(name)[0] in EMBEDDED_DATASETS:
        import sot_jax.data.tfds_builders  # noqa: F401


def _builder(name: str, data_dir: str | None, **kwargs: Any) -> Any:
    """TFDS's builder for `name`, with a UserError (one line) for a name TFDS does not know."""
    import tensorflow_datasets as tfds

    _register_embedded(name)
    try:
        return tfds.builder(name, data_dir=data_dir, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as e:  # its message goes on to list every dataset
        raise UserError(f"unknown dataset {name!r}: {str(e).splitlines()[0]}") from None
    except (AssertionError, ValueError) as e:  # an unknown version or config
        reason = re.sub(r'^Failed to construct dataset "[^"]*", builder_kwargs "[^"]*": ', "", str(e).splitlines()[0])
        reason = re.sub(r" Here are \d+ BuilderConfigs.*", "", reason)  # followed by no names in TFDS 4.9.10
        raise UserError(f"dataset {name!r}: {reason}") from None


def _check_manual_dir(builder: Any, manual_dir: str | None) -> None:
    name = builder.name
    if manual_dir is None:
        if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
            needs = " and ".join(IMAGENET_TARS) if name == "imagenet2012" else "the files TFDS's instructions name"
            raise UserError(f"{name} is prepared from files you download: pass --manual_dir=DIR holding {needs}")
        return
    if not os.path.isdir(manual_dir):
        raise UserError(f"--manual_dir {manual_dir} is not a directory")
    if name == "imagenet2012":
        missing = [tar for tar in IMAGENET_TARS if not os.path.isfile(os.path.join(manual_dir, tar))]
        if missing:
            raise UserError(f"imagenet2012 needs {' and '.join(missing)} in --manual_dir {manual_dir}")


def _shard_paths(split: Any, file_format: str) -> list[Path]:
    """The shards dataset_info.json lists for `split` (its shard lengths), named for `file_format`."""
    template = split.filename_template.replace(filetype_suffix=file_format)
    return [Path(os.fspath(p)) for p in template.sharded_filepaths(num_shards=len(split.shard_lengths))]


def _convert_shard(source: Path, target: Path, length: int) -> None:
    """Copy the serialized examples of TFRecord `source` into ArrayRecord `target`, in order; the file appears
    under its final name only once complete (a shard already there with the right length is kept: resuming)."""
    import tensorflow as tf
    from tensorflow_datasets.core import file_adapters

    array_record = file_adapters.ADAPTER_FOR_FORMAT[file_adapters.FileFormat.ARRAY_RECORD]
    if target.exists() and array_record.num_examples(target) == length:
        return
    records = file_adapters.ADAPTER_FOR_FORMAT[file_adapters.FileFormat.TFRECORD].make_tf_data(source)
    count = 0

    def keyed() -> Any:
        nonlocal count
        for record in records.as_numpy_iterator():
            count += 1
            yield None, record

    partial = target.with_name(target.name + INCOMPLETE_SUFFIX)
    try:
        try:
            array_record.write_examples(partial, keyed())
        except tf.errors.OpError as e:  # a truncated or corrupted shard
            reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", e.message.splitlines()[0])  # TF's op decorations
            raise UserError(f"cannot read TFRecord shard {source}: {reason}") from None
        if count != length:
            raise UserError(f"{source} holds {count} examples, but {INFO_FILE} says {length}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _record_array_record(directory: Path) -> None:
    """List ArrayRecord in dataset_info.json's alternativeFileFormats (written to a temporary file, then renamed)."""
    info = _read_info(directory)
    info["fileFormat"] = info.get("fileFormat") or TFRECORD  # explicit: the alternative must not become the default
    info["alternativeFileFormats"] = [*info.get("alternativeFileFormats", []), ARRAY_RECORD]
    partial = directory / (INFO_FILE + INCOMPLETE_SUFFIX)
    partial.write_text(json.dumps(info, indent=2, sort_keys=True))  # TFDS writes it sorted, indented by 2
    os.replace(partial, directory / INFO_FILE)


def _check_array_record(directory: Path) -> None:
    """That TFDS now reads every split as ArrayRecord with the number of examples the dataset info gives."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    builder = tfds.builder_from_directory(str(directory))
    if file_adapters.FileFormat.ARRAY_RECORD not in builder.info.available_file_formats():
        raise RuntimeError(f"TFDS does not list ArrayRecord for {directory} after the conversion")
    for name, split in builder.info.splits.items():
        source = builder.as_data_source(name)
        if len(source) != split.num_examples:
            raise RuntimeError(f"{directory} {name}: TFDS reads {len(source)} records, expected {split.num_examples}")


def convert_to_array_record(directory: Path, workers: int = 8) -> int:
    """Give the TFRecord dataset in `directory` (a version directory) ArrayRecord shards next to its TFRecord ones
    and record them in dataset_info.json; returns the number of examples converted. A UserError names a missing
    or short shard; files that are complete stay, so rerunning resumes."""
    import tensorflow_datasets as tfds

    directory = Path(directory)
    formats = _file_formats(_read_info(directory))
    if formats[0] != TFRECORD:
        raise UserError(f"{directory} is prepared as {formats[0]}; only TFRecord datasets can be converted")
    info = tfds.builder_from_directory(str(directory)).info
    jobs = []
    for split in info.splits.values():
        if not split.shard_lengths:
            raise UserError(f"{directory / INFO_FILE} lists no shards for split {split.name!r}; prepare it again")
        sources, targets = _shard_paths(split, TFRECORD), _shard_paths(split, ARRAY_RECORD)
        jobs += zip(sources, targets, split.shard_lengths, strict=True)
    # The shard lists come from the dataset info, so a lost shard is an error, not a smaller dataset.
    missing = [str(source) for source, _, _ in jobs if not source.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"TFRecord shard {missing[0]}{more} is missing; prepare {info.full_name} again")
    # Shards are independent; reading and writing them in parallel keeps a large dataset's disks busy.
    with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(jobs)))) as pool:
        futures = [pool.submit(_convert_shard, *job) for job in jobs]
        try:
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                future.result()
                if len(jobs) >= 20 and done % (len(jobs) // 10) == 0:
                    print(f"{done}/{len(jobs)} shards converted", flush=True)
        except BaseException:  # an error or Ctrl-C: the shards being written finish, queued ones don't start
            pool.shutdown(cancel_futures=True)
            raise
    _record_array_record(directory)
    _check_array_record(directory)
    return sum(length for _, _, length in jobs)


def prepare_dataset(name: str, data_dir: str | None, manual_dir: str | None = None) -> tuple[Path, str]:
    """Make dataset `name` available as ArrayRecord in `data_dir` (None: TFDS's default): prepare it, convert it
    from TFRecord, or find it done. Returns its version directory and a line saying which."""
    import tensorflow_datasets as tfds

    data_dir = _resolve(data_dir)
    directory = prepared_directory(name, data_dir)
    if directory is None:
        builder = _builder(name, data_dir)
        if builder.is_prepared():  # a dataset with configs named without one: TFDS knows its default config
            directory = Path(builder.data_dir)
    if directory is not None:
        if has_array_record(directory):
            return directory, f"{name} in {directory} is already prepared as ArrayRecord; nothing to do"
        count = convert_to_array_record(directory)
        return directory, f"converted {name} in {directory} to ArrayRecord ({count:,} examples); TFRecord files kept"
    _check_manual_dir(builder, manual_dir)
    builder = _builder(name, data_dir, file_format=ARRAY_RECORD)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return Path(builder.data_dir), f"prepared {name} as ArrayRecord in {builder.data_dir}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ INFO/WARNING lines
    parser = argparse.ArgumentParser(
        prog="python -m sot_jax.prepare",
        description="Prepare a TFDS dataset as ArrayRecord, or convert a TFRecord one in place (TFRecord kept).",
    )
    parser.add_argument("name", help="TFDS name: imagenet2012, glue/cola, digits:1.0.0, ...")
    parser.add_argument("--data_dir", help="TFDS data dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    parser.add_argument("--manual_dir", help="dir of manually downloaded files (imagenet2012: the ILSVRC2012 tars)")
    args = parser.parse_args(argv)
    try:
        _, message = prepare_dataset(args.name, args.data_dir, args.manual_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
