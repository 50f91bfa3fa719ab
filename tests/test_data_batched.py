"""Batched transforms (EXT of API.md 8.2): the same draws, order and results as per image.

The contract (API.md 8.1/8.2) applies the transforms image by image, in index
order, each transform in list order drawing from NumPy's global generator.
``apply_transforms_batch`` and the datasets' batched fetch must be
indistinguishable from that: equal arrays (bit for bit) and an equal generator
state afterwards. The expected values here come from calling each transform's
per-image ``__call__`` in that order (itself checked against hand-written
references in test_data.py) and, for a few cases, from an element-by-element
reference written here.
"""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from needle import data
from needle.data.data_transforms import _batchable, apply_transforms_batch

Flip, Crop = data.RandomFlipHorizontal, data.RandomCrop

MNIST_SHAPE, CIFAR_SHAPE = (28, 28, 1), (32, 32, 3)


def same_rng_state(a, b):
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


def per_image(transforms, imgs):
    out = []
    for x in imgs:
        for t in transforms:
            x = t(x)
        out.append(np.asarray(x))
    return np.stack(out)


def run_both(transforms, imgs, seed):
    """(per-image result, its end state), (batched result, its end state), same seed."""
    np.random.seed(seed)
    expect = per_image(transforms, imgs)
    expect_state = np.random.get_state()
    np.random.seed(seed)
    got = apply_transforms_batch(transforms, imgs)
    return expect, expect_state, got, np.random.get_state()


def assert_same(transforms, imgs, seed):
    expect, expect_state, got, got_state = run_both(transforms, imgs, seed)
    assert got.shape == expect.shape and got.dtype == expect.dtype
    assert got.tobytes() == expect.tobytes()                  # bit for bit
    assert same_rng_state(got_state, expect_state)
    return got


def images(n, shape, dtype=np.float32):
    return np.random.rand(n, *shape).astype(dtype)


LISTS = {
    "flip": lambda: [Flip(0.5)],
    "crop": lambda: [Crop(3)],
    "flip,crop": lambda: [Flip(0.5), Crop(3)],
    "crop,flip": lambda: [Crop(2), Flip(0.3)],
    "flip,flip": lambda: [Flip(0.5), Flip(0.7)],
    "crop2,crop2": lambda: [Crop(2), Crop(2)],
    "crop1,crop4": lambda: [Crop(1), Crop(4)],
    "flip,crop,flip,crop": lambda: [Flip(0.4), Crop(3), Flip(0.6), Crop(1)],
    "crop0,flip": lambda: [Crop(0), Flip(0.5)],
    "flip,crop0,crop5": lambda: [Flip(0.5), Crop(0), Crop(5)],
    "crop0": lambda: [Crop(0)],
}


@pytest.mark.parametrize("shape", [MNIST_SHAPE, CIFAR_SHAPE], ids=["mnist", "cifar"])
@pytest.mark.parametrize("name", sorted(LISTS))
@pytest.mark.parametrize("n", [1, 2, 7, 128])
def test_batched_equals_per_image(shape, name, n):
    imgs = images(n, shape)
    for seed in (0, 1, 123):
        assert_same(LISTS[name](), imgs, seed)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0, 0, 1, np.float32(0.3), 2.0, -1.0])
@pytest.mark.parametrize("padding", [0, 1, 2, 3, 5, 40])
def test_flip_p_and_crop_padding(p, padding):
    imgs = images(33, MNIST_SHAPE)
    for seed in (3, 4):
        assert_same([Flip(p)], imgs, seed)
        assert_same([Crop(padding)], imgs, seed)
        assert_same([Flip(p), Crop(padding)], imgs, seed)
        assert_same([Crop(padding), Flip(p)], imgs, seed)


def test_against_elementwise_reference():
    """Independent of the per-image code: the contract's formulas element by element."""
    imgs = images(9, (6, 7, 2))
    np.random.seed(8)
    expect = []
    for im in imgs:
        if np.random.rand() < 0.5:
            im = im[:, ::-1, :]
        sx, sy = np.random.randint(low=-2, high=3, size=2)
        out = np.zeros_like(im)
        for i in range(6):
            for j in range(7):
                if 0 <= i + sx < 6 and 0 <= j + sy < 7:
                    out[i, j] = im[i + sx, j + sy]
        expect.append(out)
    end = np.random.get_state()
    np.random.seed(8)
    got = apply_transforms_batch([Flip(0.5), Crop(2)], imgs)
    np.testing.assert_array_equal(got, np.stack(expect))
    assert same_rng_state(np.random.get_state(), end)


def test_single_transform_apply_batch():
    imgs = images(20, CIFAR_SHAPE)
    for t in (Flip(0.5), Crop(3), Crop(0)):
        np.random.seed(5)
        expect = np.stack([t(im) for im in imgs])
        end = np.random.get_state()
        np.random.seed(5)
        got = t.apply_batch(imgs)
        assert got.tobytes() == expect.tobytes()
        assert same_rng_state(np.random.get_state(), end)


def test_dtypes_special_values_and_layouts():
    imgs = images(12, (5, 6, 3), np.float64)
    imgs[0, 0, 0, 0], imgs[1, 2, 3, 1], imgs[2, 4, 5, 2] = -0.0, np.nan, np.inf
    tf = [Flip(0.5), Crop(2)]
    as_bytes = (np.nan_to_num(imgs, posinf=1.0) * 255).astype(np.uint8)
    for x in (imgs, imgs.astype(np.float32), as_bytes,
              np.asfortranarray(imgs), imgs[:, ::-1], imgs.transpose(0, 2, 1, 3),
              imgs[..., 0]):                                        # H x W images too
        assert_same(tf, x, 2)


def test_result_does_not_alias_input():
    imgs = images(4, MNIST_SHAPE)
    keep = imgs.copy()
    for tf in ([Flip(0.0)], [Flip(1.0)], [Crop(0)], [Crop(2)], [Flip(0.5), Crop(0)]):
        out = apply_transforms_batch(tf, imgs)
        assert not np.shares_memory(out, imgs)
        out[...] = 7
        np.testing.assert_array_equal(imgs, keep)


def test_one_call_when_all_draws_are_the_same_call(monkeypatch):
    """Homogeneous lists draw in one vectorised call; mixed lists call per image."""
    calls = []
    rand, randint = np.random.rand, np.random.randint
    monkeypatch.setattr(np.random, "rand",
                        lambda *a, **k: calls.append("rand") or rand(*a, **k))
    monkeypatch.setattr(np.random, "randint",
                        lambda *a, **k: calls.append("randint") or randint(*a, **k))
    imgs = images(50, MNIST_SHAPE)
    for tf, expect in (([Flip()], ["rand"]), ([Crop(3)], ["randint"]),
                       ([Flip(), Flip(0.2)], ["rand"]), ([Crop(2), Crop(2)], ["randint"]),
                       ([Crop(0), Flip()], ["randint", "rand"]),
                       ([Flip(), Crop(3)], ["rand", "randint"] * 50)):
        assert_same(tf, imgs, 0)
        calls.clear()
        apply_transforms_batch(tf, imgs)
        assert calls == expect


def test_crop_zero_draw_consumes_nothing():
    """What lets RandomCrop(0) join a vectorised draw: randint over one value."""
    np.random.seed(0)
    state = np.random.get_state()
    assert np.random.randint(low=0, high=1, size=2).tolist() == [0, 0]
    np.random.randint(low=0, high=1, size=(100, 2))
    assert same_rng_state(np.random.get_state(), state)


def test_empty_batch_and_empty_list_draw_nothing():
    imgs = images(0, MNIST_SHAPE)
    x = images(3, MNIST_SHAPE)
    np.random.seed(1)
    state = np.random.get_state()
    assert apply_transforms_batch([Flip(), Crop(3)], imgs).shape == (0,) + MNIST_SHAPE
    assert apply_transforms_batch([], x) is x and apply_transforms_batch(None, x) is x
    assert same_rng_state(np.random.get_state(), state)


class NoisyCrop(Crop):
    """A user subclass that changes what __call__ does: must run image by image."""

    def __call__(self, img):
        return super().__call__(img) + np.float32(np.random.rand())


class BiggerCrop(Crop):
    """A subclass that only changes the constructor: still batched."""

    def __init__(self):
        super().__init__(padding=4)


class Scale(data.Transform):
    def __call__(self, img):
        return img * np.float32(1 + np.random.rand())


def test_user_defined_transforms_fall_back_to_per_image():
    assert _batchable(Flip()) and _batchable(Crop()) and _batchable(BiggerCrop())
    assert not _batchable(NoisyCrop()) and not _batchable(Scale())
    assert not _batchable(lambda x: x) and not _batchable(data.Transform())
    imgs = images(10, CIFAR_SHAPE)
    for tf in ([Flip(), Scale(), Crop(2)], [lambda x: x[:, ::-1] * 2, Crop(1)],
               [NoisyCrop(2), Flip()], [BiggerCrop(), Flip()], [Scale()]):
        for seed in (0, 9):
            assert_same(tf, imgs, seed)
    for n in (1, 5):
        assert_same([Flip(), Scale(), Crop(3)], images(n, MNIST_SHAPE), 4)
    assert Scale().apply_batch(imgs).shape == imgs.shape


def test_batched_flip_and_crop_reject_non_images():
    with pytest.raises(ValueError, match="RandomCrop"):
        apply_transforms_batch([Crop(1)], np.zeros((3, 4)))


# --------------------------------------------------------------------------------------
# datasets and the DataLoader


def write_mnist(tmp_path, n):
    imgs = np.random.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
    labels = np.random.randint(0, 10, size=n).astype(np.uint8)
    paths = []
    for name, magic, arr in (("i", 2051, imgs), ("l", 2049, labels)):
        path = str(tmp_path / f"{name}.gz")
        with gzip.open(path, "wb") as f:
            f.write(struct.pack(">" + "I" * (1 + arr.ndim), magic, *arr.shape) + arr.tobytes())
        paths.append(path)
    return paths


def write_cifar_test(tmp_path, n):
    folder = str(tmp_path / "cifar-10-batches-py")
    os.makedirs(folder)
    d = np.random.randint(0, 256, size=(n, 3072)).astype(np.uint8)
    batch = {b"labels": [int(v) for v in np.random.randint(0, 10, size=n)], b"data": d}
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return folder


def item_by_item(cls):
    class ItemByItem(cls):      # overriding __getitem__ turns the batched fetch off
        def __getitem__(self, i):
            return super().__getitem__(i)
    return ItemByItem


def epochs(loader, seed, n_epochs=2):
    np.random.seed(seed)
    out = [[tuple(t.numpy() for t in b) for b in loader] for _ in range(n_epochs)]
    return out, np.random.get_state()


def assert_loaders_agree(fast, slow, seed):
    got, got_state = epochs(fast, seed)
    expect, expect_state = epochs(slow, seed)
    assert same_rng_state(got_state, expect_state)
    assert len(got) == len(expect)
    for ge, ee in zip(got, expect):
        assert len(ge) == len(ee)
        for gb, eb in zip(ge, ee):
            for gf, ef in zip(gb, eb):
                assert gf.shape == ef.shape
                np.testing.assert_array_equal(gf, ef)


TRANSFORM_LISTS = [
    lambda: [Flip(0.5), Crop(3)],
    lambda: [Crop(2)],
    lambda: [Flip(1.0), Crop(0)],
    lambda: [Flip(0.0)],
    lambda: [Flip(), Scale(), Crop(1)],
]


@pytest.mark.parametrize("k", range(len(TRANSFORM_LISTS)))
@pytest.mark.parametrize("bs,shuffle", [(1, True), (4, True), (128, True), (5, False)])
def test_mnist_loader_matches_item_by_item(tmp_path, k, bs, shuffle):
    ip, lp = write_mnist(tmp_path, 13)
    fast = data.MNISTDataset(ip, lp, transforms=TRANSFORM_LISTS[k]())
    slow = item_by_item(data.MNISTDataset)(ip, lp, transforms=TRANSFORM_LISTS[k]())
    assert fast._fetch_batch(np.arange(3)) is not None and slow._fetch_batch(np.arange(3)) is None
    assert_loaders_agree(data.DataLoader(fast, bs, shuffle), data.DataLoader(slow, bs, shuffle), 6)


@pytest.mark.parametrize("k", range(len(TRANSFORM_LISTS)))
@pytest.mark.parametrize("bs,shuffle", [(1, True), (4, True), (128, False)])
def test_cifar_loader_matches_item_by_item(tmp_path, k, bs, shuffle):
    folder = write_cifar_test(tmp_path, 9)
    fast = data.CIFAR10Dataset(folder, train=False, transforms=TRANSFORM_LISTS[k]())
    slow = item_by_item(data.CIFAR10Dataset)(folder, train=False, transforms=TRANSFORM_LISTS[k]())
    assert_loaders_agree(data.DataLoader(fast, bs, shuffle), data.DataLoader(slow, bs, shuffle), 2)
    (xb, _), = data.DataLoader(fast, 16)
    assert xb.shape == (9, 3, 32, 32)


def test_dataset_index_arrays_and_slices_match_items(tmp_path):
    ip, lp = write_mnist(tmp_path, 8)
    mnist = data.MNISTDataset(ip, lp, transforms=[Flip(), Crop(3)])
    cifar = data.CIFAR10Dataset(write_cifar_test(tmp_path, 8), train=False,
                                transforms=[Crop(2), Flip()])
    for ds in (mnist, cifar):
        for index in (np.array([5, 1, 1, 7]), slice(2, 6), np.array([3]), np.array([], int)):
            rows = np.arange(8)[index]
            np.random.seed(10)
            items = [ds[i] for i in rows]
            end = np.random.get_state()
            np.random.seed(10)
            X, y = ds[index]
            assert same_rng_state(np.random.get_state(), end)
            assert X.shape == (len(rows),) + ds.X.shape[1:]
            if len(rows):
                np.testing.assert_array_equal(X, np.stack([x for x, _ in items]))
                np.testing.assert_array_equal(y, [v for _, v in items])
                assert X.flags.c_contiguous and not np.shares_memory(X, ds.X)


def test_overridden_apply_transforms_is_honoured(tmp_path):
    class Doubling(data.MNISTDataset):
        def apply_transforms(self, x):
            return super().apply_transforms(x) * 2

    ip, lp = write_mnist(tmp_path, 6)
    ds = Doubling(ip, lp, transforms=[Flip(), Crop(2)])
    np.random.seed(1)
    items = np.stack([ds[i][0] for i in range(6)])
    np.random.seed(1)
    (xb, _), = data.DataLoader(ds, 6)
    np.testing.assert_array_equal(xb.numpy(), items)
    assert items.max() > 1.0                                   # the override ran
