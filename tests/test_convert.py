"""python -m sot_jax.convert: .pth/.npz -> Orbax model checkpoint, and loading it back."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from official_fixtures import load_fixture, rel_err, state_dict_of

from sot_jax import checkpoints, convert

ARCHITECTURE = dict(embed_dim=48, depth=2, num_heads=2, mlp_hidden=192)


@pytest.fixture
def deit_fixture():
    data = load_fixture("deit_variant.npz")
    assert json.loads(str(data["config"]))["backbone"] == ARCHITECTURE
    return data


def run_cli(*args: str) -> None:
    architecture = [f"--{key.replace('_', '-')}={value}" for key, value in ARCHITECTURE.items()]
    convert.main(["--model", "deit_tiny_patch16_224", "--img-size", "64", *architecture, *args])


def assert_checkpoint_reproduces(directory, data):
    model, variables, metadata = checkpoints.load_model(directory)
    assert metadata["model"] == "deit_tiny_patch16_224" and metadata["num_classes"] == 10
    with jax.default_matmul_precision("highest"):
        logits = model.apply(variables, jnp.asarray(data["images"]))
    assert rel_err(logits, data["logits"]) <= 1e-4


def test_npz_checkpoint_converts_and_loads(tmp_path, deit_fixture, capsys):
    source = tmp_path / "weights.npz"
    np.savez(source, **{k: v for k, v in deit_fixture.items() if k.startswith("sd/")})
    run_cli("--checkpoint", str(source), "--output", str(tmp_path / "out"))
    assert "wrote" in capsys.readouterr().out
    assert_checkpoint_reproduces(tmp_path / "out", deit_fixture)


def test_pth_checkpoint_in_each_layout(tmp_path, deit_fixture):
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(v) for k, v in state_dict_of(deit_fixture).items()}
    layouts = {
        "plain": tensors,
        "model": {"model": tensors},
        "state_dict": {"state_dict": tensors, "epoch": 3},
        "ema": {"state_dict": {k: v * 0 for k, v in tensors.items()}, "state_dict_ema": tensors},
    }
    for layout, content in layouts.items():
        torch.save(content, tmp_path / f"{layout}.pth")
        extra = ["--ema"] if layout == "ema" else []
        run_cli("--checkpoint", str(tmp_path / f"{layout}.pth"), "--output", str(tmp_path / layout), *extra)
        assert_checkpoint_reproduces(tmp_path / layout, deit_fixture)

    # timm checkpoints also pickle the training args: refused unless the user trusts the file.
    torch.save({"state_dict": tensors, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "args.pth")
    with pytest.raises(SystemExit, match="--allow-pickle"):
        run_cli("--checkpoint", str(tmp_path / "args.pth"), "--output", str(tmp_path / "args"))
    run_cli("--checkpoint", str(tmp_path / "args.pth"), "--output", str(tmp_path / "args"), "--allow-pickle")
    assert_checkpoint_reproduces(tmp_path / "args", deit_fixture)


def test_bad_checkpoint_writes_nothing(tmp_path, deit_fixture):
    sd = {k: v for k, v in deit_fixture.items() if k.startswith("sd/") and k != "sd/head.bias"}
    np.savez(tmp_path / "broken.npz", **sd)
    with pytest.raises(SystemExit, match="1 missing key\\(s\\): head.bias"):
        run_cli("--checkpoint", str(tmp_path / "broken.npz"), "--output", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken.npz"]  # no partial directory left behind
    with pytest.raises(SystemExit, match="does not exist"):
        run_cli("--checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "out"))


def test_existing_output_is_never_overwritten(tmp_path, deit_fixture):
    np.savez(tmp_path / "w.npz", **{k: v for k, v in deit_fixture.items() if k.startswith("sd/")})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="already exists and is not empty"):
        run_cli("--checkpoint", str(tmp_path / "w.npz"), "--output", str(tmp_path / "out"))
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_unknown_model_and_corrupt_checkpoints_are_named(tmp_path):
    with pytest.raises(SystemExit, match="unknown model 'sot_giant'"):
        convert.main(["--model", "sot_giant", "--checkpoint", __file__.replace(".py", ".npz"), "--output", "x"])
    with pytest.raises(ValueError, match="is not a sot_jax model checkpoint"):
        checkpoints.load_model(tmp_path)
    (tmp_path / checkpoints.METADATA_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt checkpoint metadata"):
        checkpoints.load_model(tmp_path)
    (tmp_path / checkpoints.METADATA_FILE).write_text(json.dumps({"model": "deit_tiny_patch16_224", "num_classes": 3}))
    with pytest.raises(ValueError, match="cannot read the variables of checkpoint"):
        checkpoints.load_model(tmp_path)
