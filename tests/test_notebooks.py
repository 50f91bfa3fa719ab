"""The notebooks: committed without outputs, and each runs top to bottom headless (nbclient).

Each notebook gets a time limit; the four together stay under 3 minutes on 2 cores with the
small settings they ship with. The data they read (Debian's dataset-fashion-mnist and
fortunes, installed by `make test`) must be present, otherwise they are skipped with the reason.
"""
import glob
import os
import shutil
import signal

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (requirements-dev.txt)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NB_DIR, "*.ipynb")))
FASHION = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"
FORTUNES = "/usr/share/games/fortunes/fortunes"
NEEDS = {"03_fashion_mnist.ipynb": (FASHION, "Debian's dataset-fashion-mnist (make data)"),
         "04_language_model.ipynb": (FORTUNES, "Debian's fortunes (apt-get install fortunes)")}
TIME_LIMIT = {"03_fashion_mnist.ipynb": 120, "04_language_model.ipynb": 120}


def ids(paths):
    return [os.path.basename(p) for p in paths]


def test_there_are_the_four_notebooks():
    assert ids(NOTEBOOKS) == ["01_autograd.ipynb", "02_ndarray.ipynb",
                              "03_fashion_mnist.ipynb", "04_language_model.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_outputs_are_stripped(path):
    """What nbstripout would leave: no outputs, no execution counts, no widget state."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{os.path.basename(path)}: a cell has outputs; clear them before committing")
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_runs(path, tmp_path):
    if os.environ.get("NEEDLE_ASAN_RUN"):
        pytest.skip("not under AddressSanitizer (make asan): matplotlib's extensions abort "
                    "there; the tools the notebooks use are tested in test_tools/test_viz")
    nbclient = pytest.importorskip("nbclient", reason="nbclient not installed")
    pytest.importorskip("ipykernel", reason="ipykernel not installed (requirements-dev.txt)")
    from jupyter_client.kernelspec import NoSuchKernel, KernelSpecManager
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel (make test installs it with ipykernel)")
    name = os.path.basename(path)
    need = NEEDS.get(name)
    if need and not os.path.exists(need[0]):
        pytest.skip(f"{name} reads {need[0]}: install {need[1]}")
    nb = nbformat.read(path, as_version=4)
    work = tmp_path / "notebooks"
    shutil.copytree(NB_DIR, work)  # run beside a copy: nothing is written into the repo
    env_root = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "MPLBACKEND": "Agg"}
    old = {k: os.environ.get(k) for k in env_root}
    os.environ.update(env_root)
    limit = TIME_LIMIT.get(name, 60)

    def too_slow(signum, frame):
        raise TimeoutError(f"{name} ran past its limit of {limit} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(limit)  # the whole notebook; nbclient's own timeout is per cell
    try:
        client = nbclient.NotebookClient(nb, timeout=limit, kernel_name="python3",
                                         resources={"metadata": {"path": str(work)}})
        client.execute()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
