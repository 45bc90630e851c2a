"""The notebooks in colabs/ run headless in their small (CPU) configuration, and are saved without outputs."""

import re

import nbformat
import pytest
from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))


def test_every_notebook_is_here_and_saved_without_outputs():
    expected = {"quickstart.ipynb", "train_and_finetune.ipynb", "svpn_explorer.ipynb", "text_finetune.ipynb"}
    assert {p.name for p in NOTEBOOKS} == expected
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), path.name
        assert any("parameters" in cell.metadata.get("tags", []) for cell in code), f"{path.name}: no parameter cell"


# What each notebook must print when it ran as intended (beyond raising no error).
EXPECTED = {
    "quickstart.ipynb": [r"checkpoint: .*quickstart_run/model", r"top-1 on these 8: \d+%"],
    "train_and_finetune.ipynb": [
        r"resumed from",
        r"restored deit_tiny_sot from .*: \d+\.\d% on 256",
        r"classifier: \(64, 2\)",
    ],  # fmt: skip
    "svpn_explorer.ipynb": [
        r"gram_eigh +relative error vs exact \(float64\): median \d\.\d\de-0[3-9]",
        r"svd +relative error vs exact \(float64\): median \d\.\d\de-0[3-9]",
        r"newton_schulz +\S+ +[\d.]+e",
    ],  # fmt: skip
    "text_finetune.ipynb": [
        r"val_glue: final -?\d+\.\d\d, best",
        r"the shares sum to each visual margin \(max error \d\.\de-0[4-9]\)",
        r"bracket +\d\.\d{3} +[+-]\d\.\d{3} +[+-]\d\.\d{3} +[+-]\d\.\d{3}",
    ],  # fmt: skip
}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_its_small_configuration(path, digits_dir, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("SOT_JAX_WORKDIR", str(tmp_path))
    monkeypatch.setenv("TFDS_DATA_DIR", digits_dir)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    for pattern in EXPECTED[path.name]:
        assert re.search(pattern, text), f"{path.name}: no output matches {pattern!r}"
