"""needle.distributed (issue 15): collectives, DistributedSampler, DistributedDataParallel.

The multi-rank tests start `mpirun -np 2` on loopback themselves, each with a
timeout (a hung rank fails the test), run a script of tests/dist_scripts/
that writes its results to a temporary directory, and compare here against
NumPy and PyTorch. They skip, naming the reason, only where MPI is missing
(`make mpi` installs OpenMPI with apt-get and mpi4py with pip).
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import needle as ndl
import needle.distributed as dist
from needle import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "dist_scripts")
MPIRUN = shutil.which("mpirun")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    MPIRUN is None or not HAVE_MPI4PY,
    reason="needs OpenMPI's mpirun and mpi4py (`make mpi`: apt-get install openmpi-bin "
           "libopenmpi-dev, pip install mpi4py)")
TIMEOUT = 240  # seconds for one mpirun; the machine is shared, startups are slow
# `make asan`: OpenMPI's allocations at MPI_Init/MPI_Finalize are not leak-checked, here and
# in the ranks (asan_site/sitecustomize.py says why); mpirun itself runs without the preload.
ASAN = bool(os.environ.get("NEEDLE_ASAN_RUN"))
ASAN_SITE = os.path.join(SCRIPTS, "asan_site")
if ASAN:
    _spec = importlib.util.spec_from_file_location("_asan_site", os.path.join(ASAN_SITE,
                                                                              "sitecustomize.py"))
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))


def mpirun(script, *args, np_=2, timeout=TIMEOUT, check=True):
    """Run tests/dist_scripts/<script> on np_ ranks; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=ROOT, NEEDLE_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_tcp_if_include="lo", OMPI_MCA_oob_tcp_if_include="lo")
    cmd = [MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", str(np_)]
    if ASAN and env.get("LD_PRELOAD"):
        # NOTE: mpirun is OpenMPI's launcher, a C program with no needle code in it; under
        # the preload LSan reports its own never-freed state (thousands of allocations,
        # most in components it has dlclosed, out of any suppression's reach). Only the
        # ranks, which run needle, get the sanitizer runtime (-x), and sitecustomize.
        cmd += ["-x", f"LD_PRELOAD={env.pop('LD_PRELOAD')}"]
        env["PYTHONPATH"] = os.pathsep.join([ASAN_SITE, ROOT])
    cmd += [sys.executable, os.path.join(SCRIPTS, script), *map(str, args)]  # absolute stays
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script} on {np_} ranks hung: no exit within {timeout} s\n{e.stdout}"
                    f"\n{e.stderr}")
    if check and proc.returncode != 0:
        pytest.fail(f"{script} on {np_} ranks exited {proc.returncode}\n{proc.stdout}\n"
                    f"{proc.stderr}")
    return proc


# ---- one process: the world of one, argument errors, the sampler, the hook --------------


def test_world_of_one_when_run_with_python():
    dist.init()
    dist.init()
    assert (dist.rank(), dist.world_size()) == (0, 1)
    t = ndl.Tensor(np.arange(3.0, dtype=np.float32))
    assert dist.all_reduce(t, op="mean") is t
    np.testing.assert_array_equal(t.numpy(), [0, 1, 2])
    np.testing.assert_array_equal(dist.all_gather(t).numpy(), [[0, 1, 2]])
    dist.barrier()


def test_init_asking_for_more_ranks_says_how_to_launch():
    with pytest.raises(RuntimeError, match=r"world_size=2 .* world of 1: .*mpirun -np 2"):
        dist.init(world_size=2)


def test_collective_argument_errors():
    t = ndl.Tensor(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="op must be one of .* got 'prod'"):
        dist.all_reduce(t, op="prod")
    with pytest.raises(ValueError, match=r"src must be a rank in \[0, 1\), got 1"):
        dist.broadcast(t, src=1)
    with pytest.raises(TypeError, match="expected a Tensor, NDArray or numpy.ndarray, got list"):
        dist.all_reduce([1.0, 2.0])
    bcast = np.broadcast_to(np.zeros(3, np.float32), (2, 3))
    with pytest.raises(ValueError, match=r"compact, writable array \(shape \(2, 3\)"):
        dist.all_reduce(bcast)
    with pytest.raises(TypeError, match="wraps a needle.nn.Module, got int"):
        dist.DistributedDataParallel(3)


@pytest.mark.parametrize("n,replicas,shuffle,drop_last",
                         [(10, 3, False, False), (11, 4, False, True), (7, 2, False, False),
                          (9, 3, True, False), (13, 5, True, True)])
def test_distributed_sampler_partitions_like_pytorch(n, replicas, shuffle, drop_last):
    from torch.utils.data import DistributedSampler as TorchSampler

    shares = []
    for r in range(replicas):
        ours = dist.DistributedSampler(range(n), num_replicas=replicas, rank=r, shuffle=shuffle,
                                       seed=4, drop_last=drop_last)
        theirs = TorchSampler(range(n), num_replicas=replicas, rank=r, shuffle=False,
                              drop_last=drop_last)
        assert len(ours) == len(theirs)
        if not shuffle:  # torch draws its permutation from its own generator
            assert list(ours) == list(theirs)
        shares.append(list(ours))
    flat = sorted(i for s in shares for i in s)
    per_rank = len(shares[0])
    assert all(len(s) == per_rank for s in shares)
    if drop_last:
        assert len(set(flat)) == len(flat) == per_rank * replicas  # no repeats
    else:
        assert set(flat) == set(range(n))  # every index, padding repeats a few
        assert len(flat) == -(-n // replicas) * replicas


def test_distributed_sampler_epochs_and_seed():
    def order(epoch, seed=0, r=0):
        s = dist.DistributedSampler(range(50), num_replicas=2, rank=r, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(0) == order(0)            # same seed and epoch: same order (every rank)
    assert order(0) != order(1)            # a new epoch: a new order
    assert order(0) != order(0, seed=1)
    assert sorted(order(3) + order(3, r=1)) == list(range(50))
    state = np.random.get_state()[1].copy()
    order(2)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global state untouched
    with pytest.raises(ValueError, match=r"rank must be in \[0, num_replicas\), got rank 2"):
        dist.DistributedSampler(range(4), num_replicas=2, rank=2)


def test_dataloader_sampler():
    ds = ndl.data.NDArrayDataset(np.arange(10.0, dtype=np.float32))
    sampler = dist.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=3)
    loader = ndl.data.DataLoader(ds, batch_size=2, sampler=sampler)
    assert len(loader) == 3
    got = np.concatenate([b[0].numpy() for b in loader])
    np.testing.assert_array_equal(got, np.array(list(sampler), dtype=np.float32))
    sampler.set_epoch(1)
    again = np.concatenate([b[0].numpy() for b in loader])
    np.testing.assert_array_equal(again, np.array(list(sampler), dtype=np.float32))
    assert not np.array_equal(got, again)
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        ndl.data.DataLoader(ds, batch_size=2, shuffle=True, sampler=sampler)


def test_grad_ready_hook_sees_final_gradients_in_reverse_parameter_order():
    model = ndl.nn.Sequential(ndl.nn.Linear(4, 5), ndl.nn.ReLU(), ndl.nn.Linear(5, 3))
    shared = model.modules[0].weight  # used twice: its gradient has two partials
    x = ndl.Tensor(np.random.randn(6, 4).astype(np.float32), requires_grad=False)
    events = []

    def hook(t):
        events.append(None if t is None else (t, t.grad.numpy().copy()))

    old = _C.set_grad_ready_hook(hook)
    try:
        loss = model(x).sum() + (shared * shared).sum()
        loss.backward()
    finally:
        assert _C.set_grad_ready_hook(old) is hook
    assert events[-1] is None and None not in events[:-1]
    seen = [t for t, _ in events[:-1]]
    params = model.parameters()
    assert len(seen) == len(params) and all(any(s is p for s in seen) for p in params)
    assert seen[0] is params[-1]  # the last layer's parameters come first
    for t, g in events[:-1]:
        np.testing.assert_array_equal(g, t.grad.numpy())  # final when reported


def test_grad_ready_hook_holds_one_reference():
    def hook(t):
        pass

    before = sys.getrefcount(hook)
    old = _C.set_grad_ready_hook(hook)
    assert sys.getrefcount(hook) == before + 1
    assert _C.set_grad_ready_hook(old) is hook
    assert sys.getrefcount(hook) == before


def test_grad_ready_hook_errors():
    with pytest.raises(TypeError, match="callable or None, got int"):
        _C.set_grad_ready_hook(3)

    def hook(t):
        raise KeyError("from the hook")

    old = _C.set_grad_ready_hook(hook)
    try:
        x = ndl.Tensor(np.ones(3, np.float32))
        with pytest.raises(KeyError, match="from the hook"):
            (x * 2).sum().backward()
    finally:
        _C.set_grad_ready_hook(old)
    (x * 2).sum().backward()  # the walk works again without the hook
    np.testing.assert_array_equal(x.grad.numpy(), [2, 2, 2])


# ---- two ranks -------------------------------------------------------------------------


@needs_mpi
def test_collectives_two_ranks(tmp_path):
    mpirun("collectives.py", tmp_path)
    res = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    want = {"sum_tensor": base * 3, "mean_ndarray": base * 1.5,
            "max_numpy64": np.maximum(base, 2 * base - 5).astype(np.float64),
            "min_int32": np.array([1, 10], np.int32), "sum_transposed": (base * 3).T,
            "bcast": base * 2 + 100, "gather": np.stack([base[0], 2 * base[1]]),
            "gather_nd": np.stack([base[:, 0], 2 * base[:, 1]])}
    for r in range(2):
        for key, value in want.items():
            np.testing.assert_array_equal(res[r][key], value, err_msg=f"{key} on rank {r}")
            assert res[r][key].dtype == value.dtype, key
        for flag in ("in_place", "gather_is_tensor", "gather_nd_is_ndarray"):
            assert bool(res[r][flag]), flag
        errors = list(res[r]["errors"])
        assert "ranks hold different arrays (rank 0 (3,) float32, rank 1 (4,) float32)" in errors[0]
        assert "got 'prod'" in errors[1] and "got 2" in errors[2]


def _torch_reference(res, X, y, steps, lr):
    """Gradients of the first step and parameters after each SGD step, full batches, float64."""
    params = [torch.tensor(res[f"init_{i}"], requires_grad=True) for i in range(6)]
    grads, after = None, []
    for step in range(steps):
        h = torch.relu(torch.tensor(X[step]) @ params[0] + params[1])
        h = torch.tanh(h @ params[2] + params[3])
        loss = torch.nn.functional.cross_entropy(h @ params[4] + params[5],
                                                 torch.tensor(y[step]))
        g = torch.autograd.grad(loss, params)
        if step == 0:
            grads = [x.numpy() for x in g]
        with torch.no_grad():
            for p, gp in zip(params, g):
                p -= lr * gp
        after.append([p.detach().numpy().copy() for p in params])
    return grads, after


@pytest.fixture(scope="module", params=["overlap", "after-backward"])
def ddp_steps(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"ddp_{request.param}")
    mpirun("ddp_steps.py", out, request.param)
    return request.param, [np.load(out / f"rank{r}.npz") for r in range(2)]


@needs_mpi
def test_ddp_gradients_equal_single_process_gradients_of_the_whole_batch(ddp_steps):
    mode, res = ddp_steps
    data = np.random.RandomState(7)
    X, y = data.randn(4, 8, 6), data.randint(0, 3, (4, 8))
    grads, _ = _torch_reference(res[0], X, y, steps=1, lr=0.1)
    for r in range(2):
        for i in range(6):  # rank 0's initial weights everywhere (broadcast)
            np.testing.assert_array_equal(res[r][f"init_{i}"], res[0][f"init_{i}"])
            np.testing.assert_allclose(res[r][f"grad_{i}"], grads[i], rtol=1e-12, atol=1e-14,
                                       err_msg=f"gradient {i} on rank {r} ({mode})")
    assert int(res[0]["num_buckets"]) >= 3
    # overlap: buckets start during the walk; otherwise all after it
    assert int(res[0]["launched_early"]) == (int(res[0]["num_buckets"])
                                             if mode == "overlap" else 0)


@needs_mpi
def test_ddp_parameters_identical_across_ranks_after_steps(ddp_steps):
    mode, res = ddp_steps
    data = np.random.RandomState(7)
    X, y = data.randn(4, 8, 6), data.randint(0, 3, (4, 8))
    _, after = _torch_reference(res[0], X, y, steps=4, lr=0.1)
    for step in range(4):
        for i in range(6):
            np.testing.assert_array_equal(res[0][f"step{step}_{i}"], res[1][f"step{step}_{i}"])
            np.testing.assert_allclose(res[0][f"step{step}_{i}"], after[step][i], rtol=1e-11,
                                       atol=1e-13)
    assert not np.allclose(res[0]["step3_0"], res[0]["init_0"])


@needs_mpi
def test_ddp_batchnorm_running_statistics_per_rank_unless_sync_bn(ddp_steps):
    _, res = ddp_steps
    X = np.random.RandomState(7).randn(4, 8, 6)
    local = [X[0, r::2] for r in range(2)]
    for r in range(2):
        np.testing.assert_allclose(res[r]["running_mean_sync0"], 0.1 * local[r].mean(0),
                                   rtol=1e-12)
        np.testing.assert_allclose(res[r]["running_var_sync0"], 0.9 + 0.1 * local[r].var(0),
                                   rtol=1e-12)
        np.testing.assert_allclose(res[r]["running_mean_sync1"],
                                   0.05 * (local[0].mean(0) + local[1].mean(0)), rtol=1e-12)
        np.testing.assert_allclose(res[r]["running_var_sync1"],
                                   0.9 + 0.05 * (local[0].var(0) + local[1].var(0)), rtol=1e-12)


@needs_mpi
def test_two_ranks_train_like_one_rank_with_the_doubled_batch(tmp_path):
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    mpirun("ddp_train.py", tmp_path / "two", "--batch", 32)
    mpirun("ddp_train.py", tmp_path / "one", "--batch", 64, np_=1)
    two, one = np.load(tmp_path / "two" / "result.npz"), np.load(tmp_path / "one" / "result.npz")
    assert float(one["acc"]) > 0.8  # it learned something
    assert abs(float(two["acc"]) - float(one["acc"])) <= 0.01
    for i in range(4):  # the same updates, up to float32 rounding
        np.testing.assert_allclose(two[f"p{i}"], one[f"p{i}"], rtol=1e-3, atol=1e-4)


@needs_mpi
def test_a_rank_that_raises_ends_the_job_instead_of_hanging():
    proc = mpirun("rank_raises.py", timeout=120, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "boom on rank 1" in text and "aborting all 2 ranks" in text
    assert "rank 0 finished the all-reduce" not in text


@needs_mpi
def test_fashion_job_distributed_on_two_ranks(tmp_path):
    """apps/train_fashion_mnist.py --distributed: rank 0 alone prints and writes."""
    from test_apps import toy_mnist

    sys.path.insert(0, os.path.join(ROOT, "apps"))
    import train_fashion_mnist as job

    toy_mnist(str(tmp_path))
    ckpt, plot = tmp_path / "m.npz", tmp_path / "m.png"
    # NOTE: matplotlib's C extensions abort under AddressSanitizer (make asan): no plot there
    asan = bool(os.environ.get("NEEDLE_ASAN_RUN"))
    proc = mpirun(os.path.join(ROOT, "apps", "train_fashion_mnist.py"), "--distributed",
                  "--data-dir", tmp_path, "--epochs", 2, "--hidden", 32, "--batch-size", 25,
                  "--checkpoint", ckpt, "--plot", "" if asan else plot)
    out = proc.stdout
    assert "x 2 ranks" in out and out.count("final test accuracy") == 1, out
    assert asan or os.path.getsize(plot) > 1000
    acc = job.main(["--data-dir", str(tmp_path), "--evaluate", str(ckpt)])
    assert acc > 0.8
