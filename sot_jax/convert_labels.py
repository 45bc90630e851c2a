"""Convert the official token label maps (TokenLabeling's `generate_label.py` output) for the input pipeline.

    python -m sot_jax.convert_labels --label-root label_top5_train_nfnet --output labels/imagenet_nfnet

The official release stores one file per training image, `LABEL_ROOT/<wnid>/<image>.pt`: a float16 tensor
[2, K, h, w] holding the annotator's top-K scores and their class indices at every cell of an h×w map (K = 5,
18×18 for NFNet-F6 at 576²). The output folder holds `scores.npy` float16 and `classes.npy` int16 [N, K, h, w]
(memory-mapped while training), `names.txt` (the image file names without extension, in row order) and
`meta.json`. Training reads it with `config.token_label_dir`. A file of another shape, with non-finite scores or
with class indices outside [0, num_classes) stops the conversion naming the file; nothing is written then.
Reading `.pt` files needs PyTorch (`pip install -e ".[torch]"`).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from sot_jax.errors import UserError


def read_label_map(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores float16 (K, h, w), classes int16 (K, h, w)) from one official .pt file, validated."""
    try:
        import torch
    except ImportError as e:
        raise UserError('reading .pt label maps needs PyTorch: pip install -e ".[torch]"') from e
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read token label map {path}: {e}") from e
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4 or tensor.shape[0] != 2:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise UserError(f"token label map {path}: expected a tensor [2, K, h, w] (scores, classes), got {shape}")
    scores, classes = tensor.float().numpy()
    if not np.all(np.isfinite(scores)):
        raise UserError(f"token label map {path}: scores are not all finite")
    if np.any(classes != np.round(classes)) or classes.min() < 0 or classes.max() >= num_classes:
        raise UserError(f"token label map {path}: class indices must be integers in [0, {num_classes})")
    return scores.astype(np.float16), classes.astype(np.int16)


def convert_labels(label_root: str | Path, output: str | Path, num_classes: int = 1000) -> Path:
    """Convert every `<wnid>/<image>.pt` under `label_root` into `output` (a new folder); returns it."""
    root, output = Path(label_root), Path(output)
    if output.exists():
        raise FileExistsError(f"{output} exists; choose a new folder (nothing is overwritten)")
    paths = sorted(root.glob("*/*.pt"))
    if not paths:
        raise UserError(f"no token label maps <wnid>/<image>.pt under {root}")
    names = [path.stem for path in paths]
    duplicates = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if duplicates:
        raise UserError(f"image names occur in more than one class folder: {', '.join(duplicates[:5])}")
    first_scores, _ = read_label_map(paths[0], num_classes)
    shape = (len(paths), *first_scores.shape)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        scores = np.lib.format.open_memmap(staging / "scores.npy", "w+", np.float16, shape)
        classes = np.lib.format.open_memmap(staging / "classes.npy", "w+", np.int16, shape)
        for row, path in enumerate(paths):
            map_scores, map_classes = read_label_map(path, num_classes)
            if map_scores.shape != shape[1:]:
                raise UserError(f"token label map {path}: shape [2, {', '.join(map(str, map_scores.shape))}] "
                                 f"differs from the first file's [2, {', '.join(map(str, shape[1:]))}]")  # fmt: skip
            scores[row], classes[row] = map_scores, map_classes
        scores.flush()
        classes.flush()
        del scores, classes
        (staging / "names.txt").write_text("\n".join(names) + "\n")
        meta = {"count": len(paths), "top_k": shape[1], "height": shape[2], "width": shape[3],
                "num_classes": num_classes, "source": str(root)}  # fmt: skip
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label-root", required=True, help="folder of <wnid>/<image>.pt files")
    parser.add_argument("--output", required=True, help="new folder for the converted maps")
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        written = convert_labels(args.label_root, args.output, args.num_classes)
    except (UserError, FileExistsError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
