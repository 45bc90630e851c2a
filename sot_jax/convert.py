"""Convert official PyTorch weights into a sot_jax model checkpoint.

    python -m sot_jax.convert --model sot_small --checkpoint sot_small.pth --output checkpoints/sot_small
    python -m sot_jax.convert --model bert_base_sot --checkpoint HF_DIR --output checkpoints/bert_base_sot

For the text models (`bert_*`, `roberta_*`, `gpt*`) the checkpoint is what HF `save_pretrained` writes (a folder
with config.json and model.safetensors or pytorch_model.bin): sizes come from config.json, the SoT head's shape
from `--sot-q/--sot-k/--head-dropout`, else the official fork's MGCrP_q/k/dp in config.json; a classifier it
lacks starts fresh (`--num-classes`, default 2 or the checkpoint's), see `models.hf_conversion.from_hf`; its
tokenizer files are kept with the weights, for fine-tuning to tokenize as the model was trained. For the vision models
the checkpoint may be a state_dict or a dict holding one under `model`, `state_dict` or `state_dict_ema`
(`--ema` picks the EMA weights, which the SoT papers report); `.npz` files of state-dict arrays work too.
Missing, unexpected or mis-shaped keys stop the conversion with a message naming them; nothing is written then.
Reading `.pth` files needs PyTorch (`pip install -e ".[torch]"`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sot_jax import checkpoints, models
from sot_jax.errors import UserError

STATE_DICT_KEYS = ("model", "state_dict", "state_dict_ema")


def read_state_dict(path: str | Path, ema: bool = False, allow_pickle: bool = False) -> Mapping[str, Any]:
    """The state_dict inside a .pth (or .npz) checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        prefixed = {k.removeprefix("sd/"): v for k, v in arrays.items() if k.startswith("sd/")}
        return prefixed or arrays
    try:
        import torch
    except ImportError as e:
        raise UserError('reading .pth files needs PyTorch: pip install -e ".[torch]"') from e
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:
        hint = (
            ""
            if allow_pickle
            else " (if it holds Python objects such as training args and you trust it, add --allow-pickle)"
        )
        raise UserError(f"cannot read {path}: {e}{hint}") from e
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a state_dict")
    if ema:
        if "state_dict_ema" not in loaded:
            raise UserError(f"{path} has no state_dict_ema (keys: {', '.join(map(str, loaded))})")
        return loaded["state_dict_ema"]
    for key in STATE_DICT_KEYS:
        if isinstance(loaded.get(key), Mapping):
            return loaded[key]
    if all(hasattr(v, "shape") for v in loaded.values()):
        return loaded
    raise UserError(
        f"{path} holds no state_dict under {', '.join(STATE_DICT_KEYS)} (keys: {', '.join(map(str, loaded))})"
    )


def convert(
    model: str,
    checkpoint: str | Path,
    output: str | Path,
    ema: bool = False,
    allow_pickle: bool = False,
    **overrides: Any,
) -> Path:
    """Convert and save; returns the written directory. `overrides` (img_size, embed_dim, depth, …) go to
    `models.create_model` and are recorded in the checkpoint. Raises UserError on bad input."""
    num_classes = overrides.pop("num_classes", None)
    if model in models.TEXT_MODELS:
        _, variables, metadata = models.from_hf(str(checkpoint), model, num_classes, **overrides)
        metadata = {**metadata, "source": str(checkpoint)}
        return checkpoints.save_model(output, variables, metadata, vocabulary_from=str(checkpoint))
    models.create_model(model, **overrides)  # an unknown name or option fails before any file is read
    state_dict = read_state_dict(checkpoint, ema=ema, allow_pickle=allow_pickle)
    variables = models.from_torch(model, state_dict, num_classes, **overrides)
    if num_classes is None:
        num_classes = models.infer_num_classes(model, {k.removeprefix("module."): v for k, v in state_dict.items()})
    metadata = {"model": model, "num_classes": num_classes, "overrides": overrides, "source": str(checkpoint)}
    return checkpoints.save_model(output, variables, metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        required=True,
        help="registered model name (python -c 'from sot_jax import models; print(models.list_models())')",
    )
    parser.add_argument("--checkpoint", required=True, help=".pth or .npz file; for text models an HF model folder")
    parser.add_argument("--output", required=True, help="new directory for the Orbax checkpoint")
    parser.add_argument("--ema", action="store_true", help="convert state_dict_ema")
    parser.add_argument("--img-size", type=int, help="image size the weights were trained at (default 224)")
    for option in ("embed_dim", "depth", "num_heads", "mlp_hidden"):
        parser.add_argument(
            f"--{option.replace('_', '-')}", type=int, help="architecture override (non-standard variants)"
        )
    parser.add_argument(
        "--num-classes", type=int, help="classes (default: the checkpoint's; a text model without a classifier: 2)"
    )
    parser.add_argument("--sot-q", type=int, help="text SoT head: MGCrP_q (default: config.json's, else 56)")
    parser.add_argument("--sot-k", type=int, help="text SoT head: MGCrP_k (default: config.json's, else 32)")
    parser.add_argument("--head-dropout", type=float, help="head dropout (text SoT head: MGCrP_dp)")
    parser.add_argument("--allow-pickle", action="store_true", help="let torch.load unpickle arbitrary objects")
    args = parser.parse_args(argv)
    try:
        text_head = ("sot_q", "sot_k", "head_dropout")
        if args.model not in models.TEXT_MODELS and any(getattr(args, k) is not None for k in text_head):
            raise UserError("--sot-q, --sot-k and --head-dropout apply to the text models (bert_*, roberta_*, gpt*)")
        options = ("img_size", "embed_dim", "depth", "num_heads", "mlp_hidden", "num_classes", *text_head)
        overrides = {k: getattr(args, k) for k in options if getattr(args, k) is not None}
        written = convert(args.model, args.checkpoint, args.output, args.ema, args.allow_pickle, **overrides)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
