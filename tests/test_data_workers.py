"""DataLoader(num_workers=N) (EXT, issue 13 item 5): worker processes, PyTorch's meaning.

The batches must equal those of num_workers=0 for the same seed (the main
process's generator is left exactly as num_workers=0 leaves it), for an
array-backed dataset (fetched with one fancy index) and for an item-by-item
one; random transforms in workers are reproducible for a seed; errors and
dead workers surface in the main process instead of hanging it. Expected
values come from num_workers=0 and from plain NumPy indexing.
"""
import os

import numpy as np
import pytest

import needle as ndl
from needle import data

X = np.random.RandomState(0).randn(203, 5).astype(np.float32)
Y = np.arange(203)


class ItemByItem(data.Dataset):
    """No _fetch_batch: read and stacked item by item."""

    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return X[i], Y[i]


class Failing(ItemByItem):
    def __getitem__(self, i):
        if i == 150:
            raise KeyError("item 150 is missing")
        return X[i], Y[i]


class Dying(ItemByItem):
    def __getitem__(self, i):
        if i == 150:
            os._exit(7)
        return X[i], Y[i]


def epochs(ds, num_workers, n_epochs=2, shuffle=True, batch_size=16, **kw):
    """Batches (as NumPy) of n_epochs, and the generator state afterwards."""
    np.random.seed(11)
    dl = data.DataLoader(ds, batch_size, shuffle=shuffle, num_workers=num_workers, **kw)
    out = [[tuple(t.numpy() for t in b) for b in dl] for _ in range(n_epochs)]
    return out, np.random.get_state()


def same_state(a, b):
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


@pytest.mark.parametrize("make", [lambda: data.NDArrayDataset(X, Y), ItemByItem],
                         ids=["array-backed", "item-by-item"])
@pytest.mark.parametrize("num_workers", [1, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_same_batches_as_no_workers(make, num_workers, shuffle):
    ref, ref_state = epochs(make(), 0, shuffle=shuffle)
    got, state = epochs(make(), num_workers, shuffle=shuffle)
    assert same_state(state, ref_state)
    assert len(got) == len(ref)
    for e_got, e_ref in zip(got, ref):
        assert len(e_got) == len(e_ref) == 13  # 203 = 12 * 16 + 11
        for b_got, b_ref in zip(e_got, e_ref):
            for f_got, f_ref in zip(b_got, b_ref):
                np.testing.assert_array_equal(f_got, f_ref)
    # against NumPy indexing: the epochs together hold every row once each
    xs = np.concatenate([b[0] for b in got[0]])
    ys = np.concatenate([b[1] for b in got[0]]).astype(np.int64)
    np.testing.assert_array_equal(xs, X[ys])
    assert sorted(ys.tolist()) == list(range(203))


def test_random_transforms_in_workers_are_reproducible():
    imgs = np.random.RandomState(1).rand(40, 28 * 28).astype(np.float32)

    class Images(data.Dataset):
        def __init__(self):
            super().__init__([data.RandomFlipHorizontal(0.5), data.RandomCrop(2)])

        def __len__(self):
            return len(imgs)

        def __getitem__(self, i):
            return self.apply_transforms(imgs[i].reshape(28, 28, 1)).reshape(-1)

    a, _ = epochs(Images(), 2, batch_size=8)
    b, _ = epochs(Images(), 2, batch_size=8)
    for ea, eb in zip(a, b):
        for ba, bb in zip(ea, eb):
            np.testing.assert_array_equal(ba[0], bb[0])


def test_worker_init_fn_runs_in_each_worker(tmp_path):
    def init(worker_id):
        (tmp_path / f"w{worker_id}-{os.getpid()}").write_text("")

    epochs(data.NDArrayDataset(X, Y), 2, n_epochs=1, worker_init_fn=init)
    names = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert names == ["w0", "w1"]
    assert all(int(p.name.split("-")[1]) != os.getpid() for p in tmp_path.iterdir())


def test_exception_in_worker_is_raised_with_its_traceback():
    dl = data.DataLoader(Failing(), 16, num_workers=2)
    with pytest.raises(RuntimeError, match="item 150 is missing") as info:
        list(dl)
    assert "KeyError" in str(info.value) and "__getitem__" in str(info.value)


def test_dead_worker_raises_instead_of_hanging():
    dl = data.DataLoader(Dying(), 16, num_workers=2)
    with pytest.raises(RuntimeError, match=r"exited unexpectedly \(exit codes \[7\]\)"):
        list(dl)


def test_break_and_iterate_again():
    np.random.seed(3)
    dl = data.DataLoader(data.NDArrayDataset(X, Y), 4, shuffle=True, num_workers=2)
    first = None
    for k, (xb, yb) in enumerate(dl):
        first = yb.numpy() if first is None else first
        if k == 2:
            break
    full = [b[1].numpy() for b in dl]
    assert len(full) == 51
    assert sorted(np.concatenate(full).astype(int).tolist()) == list(range(203))
    assert dl._pool is None  # the workers are gone after the last batch


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_num_workers_raise(bad):
    with pytest.raises(ValueError, match="num_workers"):
        data.DataLoader(data.NDArrayDataset(X, Y), 4, num_workers=bad)


def test_batches_are_tensors_with_the_default_dtype():
    xb, yb = next(iter(data.DataLoader(data.NDArrayDataset(X, Y), 8, num_workers=1)))
    assert isinstance(xb, ndl.Tensor) and xb.shape == (8, 5) and yb.shape == (8,)
    assert xb.dtype == ndl.Tensor(X[:8]).dtype
