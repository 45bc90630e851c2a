"""Listing an ImageNet-style folder tree: time and memory of `FolderSource` on a generated tree of small files.

    python bench/folder_listing.py [--classes 1000] [--per-class 100] [--root /tmp/folder_bench]

Creates root/train/<class>/<class>_<i>.JPEG (empty files with ImageNet-like names; listing never opens them)
once, then times, in a fresh process-like state, building the source and reading the split's size (one
`os.scandir` per class folder), and reports the Python heap the listing keeps (tracemalloc) and the process's
peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc
from pathlib import Path

from sot_jax.data import sources


def make_tree(root: Path, classes: int, per_class: int) -> None:
    marker = root / f".complete-{classes}-{per_class}"
    if marker.exists():
        return
    for c in range(classes):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / f"n{c:08d}_{i}.JPEG").touch()
    marker.touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--root", default="/tmp/folder_bench")
    args = parser.parse_args()
    root = Path(args.root)
    start = time.perf_counter()
    make_tree(root, args.classes, args.per_class)
    created = time.perf_counter() - start

    tracemalloc.start()
    start = time.perf_counter()
    source = sources.FolderSource(str(root))
    count = source.num_examples("train")
    listed = time.perf_counter() - start
    kept, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "files": count, "classes": source.num_classes, "list_seconds": round(listed, 3),
        "kept_MiB": round(kept / 2**20, 1), "peak_rss_MiB": round(peak_rss, 1),
        "tree_created_seconds": round(created, 1),
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
