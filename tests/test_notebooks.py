"""notebooks/: both run top to bottom in quick mode without the shared datasets (`pytest -m slow`).

Quick mode (`TFPIPELINE_NOTEBOOK_QUICK=1`) trains for one epoch on the embedded data; pointing
the data variables at a missing folder exercises the visible fallback a user without the
shared data gets. The committed notebooks hold the outputs of a full run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _run(name: str, tmp_path: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("TFPIPELINE_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("TFPIPELINE_NOTEBOOK_WORK", str(tmp_path / "work"))
    for variable in ("TFPIPELINE_FACES_DATA", "TFPIPELINE_CIFAR_DATA", "TFPIPELINE_OOD_DATA"):
        monkeypatch.setenv(variable, str(tmp_path / "no-shared-data"))
    # `!tfpipeline ...` cells run the console script of this environment.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TFPIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    return notebook


def _text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/markdown", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _assert_clean(notebook) -> None:
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", cell.source
            # `!tfpipeline` failures print "error: ..." instead of raising.
            assert not output.get("text", "").startswith("error:"), (cell.source, output["text"])


# 143 s on 2 cores of an AMD EPYC Zen 3 (six `tfpipeline train` runs, each importing TensorFlow
# in ~8 s there), a sixth of the default run, which took 16 minutes on that CPU with it. Its steps
# (train, compare, the recipe, evaluate) have their own tests; the notebook runs with `-m slow`.
@pytest.mark.slow
def test_real_vs_fake_notebook_runs_in_quick_mode_on_embedded_data(tmp_path, monkeypatch):
    notebook = _run("01_real_vs_fake.ipynb", tmp_path, monkeypatch)
    _assert_clean(notebook)
    text = _text(notebook)
    assert "uses the embedded `faces` data" in text and "words; notebook ran in" in text
    assert len(list((tmp_path / "work/01_real_vs_fake/runs").iterdir())) == 6  # 4 CNNs, head, recipe


# 105-136 s: with it the default run passed 10 minutes. Its steps (predict --csv, tuner searches,
# the recipe) have their own tests; the notebook itself runs with `pytest -m slow`.
@pytest.mark.slow
def test_cifar_notebook_runs_in_quick_mode_and_writes_a_submission(tmp_path, monkeypatch):
    import pandas as pd

    notebook = _run("02_cifar10_kaggle.ipynb", tmp_path, monkeypatch)
    _assert_clean(notebook)
    text = _text(notebook)
    assert "uses the embedded `digits` data" in text and "words; notebook ran in" in text
    work = tmp_path / "work/02_cifar10_kaggle"
    rows = pd.read_csv(work / "submission.csv")
    written = sorted((work / "digits/val").rglob("*.png"))
    assert list(rows.columns) == ["ID", "TARGET"] and len(rows) == len(written) == 180
    assert sorted(rows["ID"]) == sorted(int(p.stem) for p in written)
    assert {"grid", "random", "bayesian"} <= {p.name for p in (work / "tuner_results").iterdir()}
