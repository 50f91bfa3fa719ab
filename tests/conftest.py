"""Shared pytest setup for needle's test suite.

- Puts the repository root on ``sys.path`` so ``import needle`` finds the
  in-place build (``python setup.py build_ext --inplace``) without installing.
- Seeds NumPy's global generator before every test, with a seed derived from
  the test's node id: every test is reproducible on its own and in any order,
  and different tests still see different data. The device's part of the id
  is left out, so a test's cpu and cuda cases see the same data (and the cpu
  cases the data they saw before they were parametrized over devices).
- The ``device`` fixture: each test that takes it runs on ``cpu()`` and on
  ``cuda()``; the cuda case is skipped, with the reason, where no GPU is usable.
- ``train_steps``: the plain training loop (SoftmaxLoss, reset_grad, backward,
  step) that the checkpoint tests run before and after saving.
- ``each_thread_count``: 1 and 2 pool threads in turn, for the kernels' tests
  that results do not depend on the thread count.
"""
import os
import sys
import zlib

import numpy as np
import pytest

import needle as ndl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def train_steps(model, opt, data, device=None) -> list:
    """One optimizer step per (x, y) batch of `data`; returns each loss's bytes."""
    losses = []
    model.train()
    for x, y in data:
        opt.reset_grad()
        loss = ndl.nn.SoftmaxLoss()(model(ndl.Tensor(x, device=device)),
                                    ndl.Tensor(y, device=device))
        loss.backward()
        opt.step()
        losses.append(loss.numpy().tobytes())
    return losses


def each_thread_count():
    """1 and 2 threads in turn (yielding the count), the pool's count after."""
    nd = ndl.backend_ndarray
    before = nd.get_num_threads()
    try:
        for threads in (1, 2):
            nd.set_num_threads(threads)
            yield threads
    finally:
        nd.set_num_threads(before)


def _cuda_unusable():
    """None when cuda() runs kernels here, else why not."""
    if not hasattr(ndl, "cuda"):
        return "np mode (NEEDLE_BACKEND=np) has no cuda()"
    if ndl.cuda().enabled():
        return None
    try:
        import needle._cuda as cu
    except ImportError as e:
        return f"needle._cuda is not built ({e})"
    return cu.probe() or "cuda() is not enabled"


CUDA_WHY = _cuda_unusable()
DEVICE_IDS = ("cpu", "cuda")


@pytest.fixture(params=[pytest.param("cpu", id="cpu"),
                        pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
                            CUDA_WHY is not None, reason=f"no GPU: {CUDA_WHY}"))])
def device(request):
    """The device of this case: ``cpu()``, or ``cuda()`` where a GPU is usable."""
    return ndl.cpu() if request.param == "cpu" else ndl.cuda()


def _seed_id(node) -> str:
    """The node id without the device's part ("[cpu-x]" -> "[x]", "[cpu]" -> "")."""
    nid = node.nodeid
    spec = getattr(node, "callspec", None)
    dev = spec.params.get("device") if spec is not None else None
    if isinstance(dev, str) and dev in DEVICE_IDS and "[" in nid and nid.endswith("]"):
        head, ids = nid[:nid.index("[")], nid[nid.index("[") + 1:-1]
        if ids == dev:
            return head
        if ids.startswith(dev + "-"):
            ids = ids[len(dev) + 1:]
        elif ids.endswith("-" + dev):
            ids = ids[:-len(dev) - 1]
        else:
            ids = ids.replace(f"-{dev}-", "-", 1)
        return f"{head}[{ids}]"
    return nid


@pytest.fixture(autouse=True)
def _seed_numpy(request):
    """Seed ``np.random`` per test (stable across runs and test orders)."""
    np.random.seed(zlib.crc32(_seed_id(request.node).encode()) & 0x7FFFFFFF)
    yield
