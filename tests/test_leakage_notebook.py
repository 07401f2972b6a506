"""docs/leakage_demo.ipynb runs top to bottom on the project's own interpreter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import python_exe

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "leakage_demo.ipynb"


@pytest.mark.slow  # starts a Jupyter kernel: not for the edit loop (make test-fast)
def test_demo_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # A kernelspec of our own, so the kernel is this venv's python whatever Jupyter setup the machine has.
    spec = tmp_path / "jupyter" / "kernels" / "piperctl-test"
    spec.mkdir(parents=True)
    argv = [python_exe(), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "piperctl", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    # The notebook works in tempfile.mkdtemp(): inside this test's folder, removed with it.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="piperctl-test", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text = "".join(
        o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "overall: fail" in text
    assert "Cross-episode contamination" in text and '"exact_duplicate": false' in text
