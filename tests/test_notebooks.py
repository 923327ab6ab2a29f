"""The notebooks run (nbclient, the venv's python3 kernel) so they cannot rot, and none is committed
with outputs. They run on small re-created artifacts (SIGMABRANCH_NB_SMALL), built once and shared."""
import time
from pathlib import Path

import pytest

import ipykernel  # noqa: F401  (the notebooks' python3 kernel; a dev dependency, never skipped)
import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["ddr_traffic", "routing", "results"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_builds):
    """The notebooks' small artifacts (their SIGMABRANCH_NB_WORK layout: export/, pynq-z2/, zcu104/):
    the session's tiny builds, which are what the notebooks would re-create."""
    work = tmp_path_factory.mktemp("notebooks")
    shared_builds.copy(work / "artifacts", "pynq-z2", "zcu104")
    return work


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}.ipynb has outputs committed"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, work, monkeypatch):
    monkeypatch.setenv("SIGMABRANCH_NB_SMALL", "1")
    monkeypatch.setenv("SIGMABRANCH_NB_WORK", str(work / "artifacts"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    t0 = time.monotonic()
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    elapsed = time.monotonic() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= (1 if name != "results" else 0)
    print(f"{name}.ipynb executed in {elapsed:.0f} s")  # measured, not asserted (speed belongs in bench/)
