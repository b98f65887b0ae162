"""Executes every notebook (jupytext .py source -> nbclient, kernel python3) in fast mode."""
import os

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
NOTEBOOKS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "notebooks")) if f[:2].isdigit() and f.endswith(".py"))


def test_notebooks_are_paired():
  import jupytext
  assert NOTEBOOKS == ["01_quickstart", "02_fusion_prototyping", "03_attention_and_masks"]
  for name in NOTEBOOKS:
    ipynb = os.path.join(ROOT, "notebooks", name + ".ipynb")
    assert os.path.exists(ipynb), f"{name}.ipynb is missing: run `jupytext --to ipynb notebooks/{name}.py`."
    src = [c.source for c in jupytext.read(os.path.join(ROOT, "notebooks", name + ".py")).cells]
    paired = [c.source for c in jupytext.read(ipynb).cells]
    assert src == paired, f"{name}.ipynb is out of date: run `jupytext --to ipynb notebooks/{name}.py`."


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, shared_data_dir, monkeypatch, tmp_path):
  import jupytext
  import nbclient
  monkeypatch.setenv("MMJAX_NOTEBOOK_FAST", "1")
  monkeypatch.setenv("MMJAX_DATA_DIR", shared_data_dir)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # the notebooks run on one CPU device
  nb = jupytext.read(os.path.join(ROOT, "notebooks", name + ".py"))
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
  client.execute()  # raises CellExecutionError naming the failing cell
