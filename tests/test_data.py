"""needle.data (API.md 8): DataLoader, transforms and the built-in datasets.

Every expected value is computed here with NumPy from the arrays or files the
test itself writes (or, for the real Fashion-MNIST files, decoded here with
gzip + struct), never read back from needle. Random draws are checked against
NumPy's global generator under the same seed: one np.random.permutation(N)
per DataLoader epoch, one rand() per flip, one randint(size=2) per crop.
"""
import gzip
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

import needle as ndl
from needle import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


def same_rng_state(a, b):
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


def batches_of(loader):
    return [tuple(t.numpy() for t in batch) for batch in loader]


# --------------------------------------------------------------------------------------
# public surface

def test_names_and_submodules():
    names = ["Dataset", "DataLoader", "Transform", "RandomFlipHorizontal", "RandomCrop",
             "MNISTDataset", "NDArrayDataset", "CIFAR10Dataset", "Dictionary", "Corpus",
             "batchify", "get_batch"]
    for name in names:
        assert hasattr(ndl.data, name), name
    import needle.data.datasets.cifar10_dataset as c
    import needle.data.datasets.mnist_dataset as m
    import needle.data.datasets.ndarray_dataset as n
    import needle.data.datasets.ptb_dataset as p
    assert m.MNISTDataset is data.MNISTDataset and n.NDArrayDataset is data.NDArrayDataset
    assert c.CIFAR10Dataset is data.CIFAR10Dataset and p.get_batch is data.get_batch
    assert issubclass(data.MNISTDataset, data.Dataset)
    assert issubclass(data.RandomCrop, data.Transform)


# --------------------------------------------------------------------------------------
# DataLoader: batching, collation

@pytest.mark.parametrize("n,bs", [(10, 3), (10, 5), (10, 10), (10, 1), (4, 7), (1, 1)])
def test_sequential_batches(n, bs):
    X = np.random.randn(n, 3, 2).astype(np.float32)
    y = np.random.randint(0, 10, size=n)
    loader = data.DataLoader(data.NDArrayDataset(X, y), batch_size=bs)
    got = batches_of(loader)
    starts = list(range(0, n, bs))
    assert len(got) == len(starts) == len(loader)
    for (xb, yb), s in zip(got, starts):
        np.testing.assert_array_equal(xb, X[s:s + bs])
        np.testing.assert_array_equal(yb, y[s:s + bs].astype(np.float32))
    assert got[-1][0].shape[0] == n - starts[-1]          # last batch may be short
    # a second pass gives the same batches
    again = batches_of(loader)
    for a, b in zip(got, again):
        np.testing.assert_array_equal(a[0], b[0])


def test_batch_is_tuple_of_tensors_with_default_dtype_and_device():
    X = np.random.randn(5, 4)                               # float64 input
    y = np.arange(5, dtype=np.uint8)
    (xb, yb), = list(data.DataLoader(data.NDArrayDataset(X, y), batch_size=5))
    assert type(xb) is ndl.Tensor and type(yb) is ndl.Tensor
    assert xb.shape == (5, 4) and yb.shape == (5,)
    assert xb.dtype == "float32" and yb.dtype == "float32"  # nd mode stores float32
    assert xb.device == ndl.default_device()
    assert xb.requires_grad                                   # Tensor(array) default
    np.testing.assert_allclose(xb.numpy(), X.astype(np.float32))


class ItemDataset(data.Dataset):
    """Per-item dataset (no batch fast path): item i is built from i alone."""

    def __init__(self, n, make):
        super().__init__()
        self.n, self.make = n, make
        self.calls = []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.calls.append(int(i))
        return self.make(int(i))


def test_collation_stacks_each_field_along_axis0():
    ds = ItemDataset(5, lambda i: (np.full((2, 3), i, np.float32), i, np.array([i, -i])))
    batches = list(data.DataLoader(ds, batch_size=2))
    assert [len(b) for b in batches] == [3, 3, 3]
    a, b, c = batches[0]
    assert (a.shape, b.shape, c.shape) == ((2, 2, 3), (2,), (2, 2))
    np.testing.assert_array_equal(a.numpy(), np.stack([np.full((2, 3), i) for i in (0, 1)]))
    np.testing.assert_array_equal(c.numpy(), [[0, 0], [1, -1]])
    assert ds.calls == [0, 1, 2, 3, 4]                       # fetched in index order


def test_one_tuple_and_non_tuple_items_give_one_tuples():
    one = ItemDataset(3, lambda i: (np.array([i, i], np.float32),))
    bare = ItemDataset(3, lambda i: np.array([i, i], np.float32))
    for ds in (one, bare):
        batches = list(data.DataLoader(ds, batch_size=2))
        assert all(isinstance(b, tuple) and len(b) == 1 for b in batches)
        np.testing.assert_array_equal(batches[0][0].numpy(), [[0, 0], [1, 1]])
    # NDArrayDataset of one array, through the batched fetch
    X = np.random.rand(5, 2)
    batches = list(data.DataLoader(data.NDArrayDataset(X), batch_size=4))
    assert [len(b) for b in batches] == [1, 1]
    np.testing.assert_allclose(batches[1][0].numpy(), X[4:].astype(np.float32))


def test_items_with_different_field_counts_raise():
    ds = ItemDataset(2, lambda i: (np.zeros(2),) * (i + 1))
    with pytest.raises(ValueError, match="fields"):
        list(data.DataLoader(ds, batch_size=2))


def test_batched_fetch_equals_item_by_item_fetch():
    class ItemByItem(data.NDArrayDataset):      # overriding __getitem__ turns the fast path off
        def __getitem__(self, i):
            return tuple(a[i] for a in self.arrays)

    X = np.random.rand(23, 3).astype(np.float32)
    y = np.random.randint(0, 5, 23)
    for shuffle in (False, True):
        np.random.seed(7)
        fast = batches_of(data.DataLoader(data.NDArrayDataset(X, y), 4, shuffle))
        np.random.seed(7)
        slow = batches_of(data.DataLoader(ItemByItem(X, y), 4, shuffle))
        for f, s in zip(fast, slow):
            np.testing.assert_array_equal(f[0], s[0])
            np.testing.assert_array_equal(f[1], s[1])


def test_empty_dataset_gives_no_batches():
    assert list(data.DataLoader(data.NDArrayDataset(np.zeros((0, 3))), batch_size=4)) == []


@pytest.mark.parametrize("bs", [0, -1])
def test_nonpositive_batch_size_raises(bs):
    with pytest.raises(ValueError, match="batch_size"):
        data.DataLoader(data.NDArrayDataset(np.zeros((3, 1))), batch_size=bs)


def test_non_integer_batch_size_raises():
    with pytest.raises(TypeError, match="batch_size"):
        data.DataLoader(data.NDArrayDataset(np.zeros((3, 1))), batch_size=2.5)


def test_ndarray_dataset_indexing_and_length_mismatch():
    X, y = np.random.rand(6, 2), np.arange(6)
    ds = data.NDArrayDataset(X, y)
    assert len(ds) == 6
    xi, yi = ds[np.array([4, 1])]
    np.testing.assert_array_equal(xi, X[[4, 1]])
    assert ds[2][1] == 2 and ds[1:3][0].shape == (2, 2)
    with pytest.raises(ValueError, match="rows"):
        data.NDArrayDataset(X, np.arange(5))


# --------------------------------------------------------------------------------------
# DataLoader: shuffling (API.md 10.19)

def test_shuffle_draws_one_permutation_per_epoch_at_iter_time():
    n, bs = 25, 4
    X = np.arange(n, dtype=np.float32).reshape(n, 1)
    np.random.seed(11)
    perm1 = np.random.permutation(n)
    after_one = np.random.get_state()
    perm2 = np.random.permutation(n)
    after_two = np.random.get_state()

    np.random.seed(11)
    state0 = np.random.get_state()
    loader = data.DataLoader(data.NDArrayDataset(X), batch_size=bs, shuffle=True)
    assert same_rng_state(np.random.get_state(), state0)      # no draw in the constructor
    assert iter(loader) is loader
    assert same_rng_state(np.random.get_state(), after_one)   # one draw at __iter__
    got1 = []
    while True:
        try:
            got1.append(next(loader)[0].numpy().ravel())
        except StopIteration:
            break
    assert same_rng_state(np.random.get_state(), after_one)   # none in __next__
    got2 = [b[0].numpy().ravel() for b in loader]             # second epoch, second draw
    assert same_rng_state(np.random.get_state(), after_two)

    assert [len(g) for g in got1] == [4, 4, 4, 4, 4, 4, 1]
    for got, perm in ((got1, perm1), (got2, perm2)):
        expect = np.array_split(perm, range(bs, n, bs))
        assert len(got) == len(expect)
        for g, e in zip(got, expect):
            np.testing.assert_array_equal(g, e.astype(np.float32))
    assert not np.array_equal(perm1, perm2)
    # re-seeding before an epoch repeats it (what the course's helpers do, API.md 10.19)
    np.random.seed(11)
    again = np.concatenate([b[0].numpy().ravel() for b in loader])
    np.testing.assert_array_equal(again, perm1.astype(np.float32))


def test_no_shuffle_draws_nothing():
    loader = data.DataLoader(data.NDArrayDataset(np.zeros((9, 1))), batch_size=2)
    np.random.seed(3)
    state = np.random.get_state()
    list(loader)
    assert same_rng_state(np.random.get_state(), state)


# --------------------------------------------------------------------------------------
# transforms (API.md 8.2), against hand-written references

def flip_reference(img, p):
    u = np.random.rand()
    return img[:, ::-1, :] if u < p else img


def crop_reference(img, padding):
    """Element-by-element crop of the zero-padded image (independent of np.pad)."""
    sx, sy = np.random.randint(low=-padding, high=padding + 1, size=2)
    H, W, C = img.shape
    out = np.zeros_like(img)
    for i in range(H):
        for j in range(W):
            si, sj = i + sx, j + sy
            if 0 <= si < H and 0 <= sj < W:
                out[i, j, :] = img[si, sj, :]
    return out


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_random_flip_horizontal(p):
    imgs = np.random.rand(20, 4, 5, 3).astype(np.float32)
    np.random.seed(5)
    expect = [flip_reference(im, p) for im in imgs]
    end = np.random.get_state()
    np.random.seed(5)
    t = data.RandomFlipHorizontal(p)
    got = [t(im) for im in imgs]
    assert same_rng_state(np.random.get_state(), end)         # one rand() per image
    for g, e in zip(got, expect):
        assert g.shape == e.shape
        np.testing.assert_array_equal(g, e)
    assert data.RandomFlipHorizontal().p == 0.5


@pytest.mark.parametrize("padding", [0, 1, 3, 5])
def test_random_crop(padding):
    imgs = np.random.rand(15, 6, 7, 2).astype(np.float32)
    np.random.seed(9)
    expect = [crop_reference(im, padding) for im in imgs]
    end = np.random.get_state()
    np.random.seed(9)
    t = data.RandomCrop(padding)
    got = [t(im) for im in imgs]
    assert same_rng_state(np.random.get_state(), end)         # one randint(size=2) per image
    for g, e in zip(got, expect):
        assert g.shape == e.shape
        np.testing.assert_array_equal(g, e)
    assert data.RandomCrop().padding == 3


def test_apply_transforms_in_list_order_and_identity():
    ds = data.Dataset(transforms=[lambda x: x + 1, lambda x: x * 10])
    assert ds.apply_transforms(np.array(2)) == 30
    x = np.ones(3)
    assert data.Dataset().apply_transforms(x) is x
    with pytest.raises(NotImplementedError):
        data.Dataset()[0]
    with pytest.raises(NotImplementedError):
        data.Transform()(x)


# --------------------------------------------------------------------------------------
# MNIST IDX files

def idx_bytes(magic, arr):
    return struct.pack(">" + "I" * (1 + arr.ndim), magic, *arr.shape) + arr.tobytes()


def write(path, payload, gz):
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)
    return str(path)


def make_mnist(tmp_path, n=7, gz_images=True, gz_labels=True, prefix="t"):
    imgs = np.random.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
    imgs[0, 0, 0], imgs[0, 0, 1] = 0, 255                      # both ends of the range
    labels = np.random.randint(0, 10, size=n).astype(np.uint8)
    ip = write(tmp_path / f"{prefix}-images", idx_bytes(2051, imgs), gz_images)
    lp = write(tmp_path / f"{prefix}-labels", idx_bytes(2049, labels), gz_labels)
    return ip, lp, imgs, labels


@pytest.mark.parametrize("gz_images,gz_labels", [(True, True), (False, False), (True, False)])
def test_mnist_parsing(tmp_path, gz_images, gz_labels):
    ip, lp, imgs, labels = make_mnist(tmp_path, 9, gz_images, gz_labels)
    ds = data.MNISTDataset(ip, lp)
    expect = imgs.reshape(9, 784).astype(np.float64) / 255.0
    assert len(ds) == 9
    assert ds.X.dtype == np.float32 and ds.X.shape == (9, 784)
    np.testing.assert_allclose(ds.X, expect, rtol=1e-7, atol=0)
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    assert ds.y.dtype == np.uint8
    np.testing.assert_array_equal(ds.y, labels)
    x, y = ds[3]
    assert x.shape == (784,) and y == labels[3]
    xs, ys = ds[np.array([8, 2])]
    assert xs.shape == (2, 784) and list(ys) == [labels[8], labels[2]]
    assert ds[2:5][0].shape == (3, 784)


def test_mnist_loader_shuffled_batches(tmp_path):
    ip, lp, imgs, labels = make_mnist(tmp_path, 11)
    ds = data.MNISTDataset(ip, lp)
    np.random.seed(4)
    perm = np.random.permutation(11)
    np.random.seed(4)
    batches = batches_of(data.DataLoader(ds, batch_size=4, shuffle=True))
    assert [b[0].shape for b in batches] == [(4, 784), (4, 784), (3, 784)]
    X = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    np.testing.assert_allclose(X, imgs[perm].reshape(11, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels[perm])


def test_mnist_transforms_draw_per_sample_in_index_order(tmp_path):
    ip, lp, imgs, labels = make_mnist(tmp_path, 10)
    ds = data.MNISTDataset(ip, lp, transforms=[data.RandomFlipHorizontal(0.5),
                                               data.RandomCrop(2)])
    floats = imgs.astype(np.float32) / np.float32(255)
    np.random.seed(21)
    perm = np.random.permutation(10)
    expect = []
    for i in perm:
        im = floats[i].reshape(28, 28, 1)
        expect.append(crop_reference(flip_reference(im, 0.5), 2).reshape(784))
    np.random.seed(21)
    batches = batches_of(data.DataLoader(ds, batch_size=3, shuffle=True))
    assert [b[0].shape for b in batches] == [(3, 784)] * 3 + [(1, 784)]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), np.stack(expect))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels[perm])
    # direct indexing: an int gives (784,), an index array (k, 784), draws in order
    np.random.seed(2)
    e0 = crop_reference(flip_reference(floats[5].reshape(28, 28, 1), 0.5), 2).reshape(784)
    e1 = crop_reference(flip_reference(floats[1].reshape(28, 28, 1), 0.5), 2).reshape(784)
    np.random.seed(2)
    x, _ = ds[np.array([5, 1])]
    np.testing.assert_array_equal(x, np.stack([e0, e1]))
    np.random.seed(2)
    assert ds[5][0].shape == (784,)


def assert_value_error(fn, *fragments):
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, (frag, msg)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_bad_files(tmp_path, gz):
    imgs = np.random.randint(0, 256, size=(4, 28, 28)).astype(np.uint8)
    labels = np.arange(4, dtype=np.uint8)
    good_i = write(tmp_path / "good-i", idx_bytes(2051, imgs), gz)
    good_l = write(tmp_path / "good-l", idx_bytes(2049, labels), gz)

    # corrupt magic, and image/label files swapped
    bad = write(tmp_path / "magic-i", idx_bytes(0x12345678, imgs), gz)
    assert_value_error(lambda: data.MNISTDataset(bad, good_l), bad, "magic", "2051")
    assert_value_error(lambda: data.MNISTDataset(good_l, good_i), good_l, "magic", "swapped")
    bad = write(tmp_path / "magic-l", idx_bytes(2051, labels), gz)
    assert_value_error(lambda: data.MNISTDataset(good_i, bad), bad, "magic", "2049")
    # header cut short
    bad = write(tmp_path / "short-i", idx_bytes(2051, imgs)[:10], gz)
    assert_value_error(lambda: data.MNISTDataset(bad, good_l), bad, "header")
    bad = write(tmp_path / "empty-l", b"", gz)
    assert_value_error(lambda: data.MNISTDataset(good_i, bad), bad, "header")
    # zero-sized images
    bad = write(tmp_path / "dims-i", struct.pack(">IIII", 2051, 4, 0, 28), gz)
    assert_value_error(lambda: data.MNISTDataset(bad, good_l), bad, "header")
    # data cut short / longer than the header says
    bad = write(tmp_path / "trunc-i", idx_bytes(2051, imgs)[:-5], gz)
    assert_value_error(lambda: data.MNISTDataset(bad, good_l), bad, "truncated", "4 images")
    bad = write(tmp_path / "trunc-l", idx_bytes(2049, labels)[:-1], gz)
    assert_value_error(lambda: data.MNISTDataset(good_i, bad), bad, "truncated", "4 labels")
    bad = write(tmp_path / "long-l", idx_bytes(2049, labels) + b"\0\0", gz)
    assert_value_error(lambda: data.MNISTDataset(good_i, bad), bad, "unexpected bytes")
    # image/label count mismatch
    bad = write(tmp_path / "few-l", idx_bytes(2049, labels[:3]), gz)
    assert_value_error(lambda: data.MNISTDataset(good_i, bad), "mismatch", good_i, bad,
                       "4 images", "3 labels")


def test_mnist_corrupt_gzip_and_missing_file(tmp_path):
    imgs = np.zeros((2, 28, 28), np.uint8)
    good_l = write(tmp_path / "l.gz", idx_bytes(2049, np.zeros(2, np.uint8)), True)
    whole = gzip.compress(idx_bytes(2051, imgs))
    bad = str(tmp_path / "cut.gz")
    with open(bad, "wb") as f:
        f.write(whole[:len(whole) // 2])
    assert_value_error(lambda: data.MNISTDataset(bad, good_l), bad, "gzip")
    missing = str(tmp_path / "no-such-images.gz")
    with pytest.raises(FileNotFoundError) as info:
        data.MNISTDataset(missing, good_l)
    assert missing in str(info.value) and info.value.filename == missing
    with pytest.raises(FileNotFoundError, match="no-such-labels"):
        data.MNISTDataset(write(tmp_path / "i", idx_bytes(2051, imgs), False),
                          str(tmp_path / "no-such-labels"))


def read_idx_reference(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n = struct.unpack(">II", raw[:8])
    if magic == 2051:
        _, rows, cols = struct.unpack(">III", raw[4:16])
        return magic, np.frombuffer(raw[16:], np.uint8).reshape(n, rows * cols)
    return magic, np.frombuffer(raw[8:], np.uint8)


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
@pytest.mark.parametrize("split,n", [("train", 60000), ("t10k", 10000)])
def test_real_fashion_mnist(split, n):
    ip = os.path.join(FASHION_DIR, f"{split}-images-idx3-ubyte.gz")
    lp = os.path.join(FASHION_DIR, f"{split}-labels-idx1-ubyte.gz")
    ds = data.MNISTDataset(ip, lp)
    assert len(ds) == n and ds.X.shape == (n, 784) and ds.X.dtype == np.float32
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    assert ds.y.dtype == np.uint8 and set(np.unique(ds.y)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(ds.y), [n // 10] * 10)  # balanced classes
    magic_i, ref_x = read_idx_reference(ip)
    magic_l, ref_y = read_idx_reference(lp)
    assert (magic_i, magic_l) == (2051, 2049)
    rows = np.random.choice(n, 50, replace=False)
    np.testing.assert_allclose(ds.X[rows], ref_x[rows] / 255.0, rtol=1e-7)
    np.testing.assert_array_equal(ds.y, ref_y)
    first = next(iter(data.DataLoader(ds, batch_size=128)))
    assert first[0].shape == (128, 784) and first[1].shape == (128,)
    np.testing.assert_allclose(first[0].numpy(), ref_x[:128] / 255.0, rtol=1e-6)


# --------------------------------------------------------------------------------------
# CIFAR-10 python batches

def write_cifar(folder, sizes, legacy_numpy_name=()):
    """Batches in the official format: pickled dicts with bytes keys (protocol 2)."""
    os.makedirs(folder, exist_ok=True)
    out = {}
    for name, n in sizes.items():
        d = np.random.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        labels = [int(v) for v in np.random.randint(0, 10, size=n)]
        batch = {b"batch_label": f"{name} of 5".encode(), b"labels": labels, b"data": d,
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        raw = pickle.dumps(batch, protocol=2)
        if name in legacy_numpy_name:  # as written by NumPy 1.x: numpy.core.multiarray
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        with open(os.path.join(folder, name), "wb") as f:
            f.write(raw)
        out[name] = (d, labels)
    return out


@pytest.fixture
def cifar_dir(tmp_path):
    folder = str(tmp_path / "cifar-10-batches-py")
    sizes = {f"data_batch_{i}": i + 1 for i in range(1, 6)}
    sizes["test_batch"] = 3
    return folder, write_cifar(folder, sizes, legacy_numpy_name=("data_batch_2",))


def test_cifar10_train_and_test(cifar_dir):
    folder, written = cifar_dir
    train = data.CIFAR10Dataset(folder, train=True)
    test = data.CIFAR10Dataset(folder, train=False)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    raw = np.concatenate([written[k][0] for k in names])
    labels = np.concatenate([written[k][1] for k in names])
    assert len(train) == raw.shape[0] == 2 + 3 + 4 + 5 + 6 and len(test) == 3
    assert train.X.shape == (20, 3, 32, 32) and train.X.dtype == np.float32
    np.testing.assert_allclose(train.X, raw.reshape(20, 3, 32, 32) / 255.0, rtol=1e-7)
    # channel-major layout: first 1024 bytes are the red plane, row-major
    np.testing.assert_allclose(train.X[0, 1, 2, 3], raw[0, 1024 + 2 * 32 + 3] / 255.0)
    np.testing.assert_array_equal(train.y, labels)
    np.testing.assert_array_equal(test.y, written["test_batch"][1])
    x, y = train[7]
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and y == labels[7]
    batches = list(data.DataLoader(test, batch_size=2))
    assert [b[0].shape for b in batches] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    np.testing.assert_allclose(batches[1][0].numpy()[0],
                               written["test_batch"][0][2].reshape(3, 32, 32) / 255.0, rtol=1e-6)


def test_cifar10_transforms_work_on_hwc(cifar_dir):
    folder, written = cifar_dir
    ds = data.CIFAR10Dataset(folder, train=False, transforms=[data.RandomFlipHorizontal(1.0)])
    x, _ = ds[1]
    ref = written["test_batch"][0][1].reshape(3, 32, 32) / 255.0
    np.testing.assert_allclose(x, ref[:, :, ::-1], rtol=1e-7)   # W is the last axis of CHW
    assert x.shape == (3, 32, 32)


def test_cifar10_bad_files(tmp_path, cifar_dir):
    folder, _ = cifar_dir
    os.remove(os.path.join(folder, "data_batch_4"))
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        data.CIFAR10Dataset(folder, train=True)

    evil = str(tmp_path / "evil")
    os.makedirs(evil)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(os.path.join(evil, "test_batch"), "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match="not allowed"):
        data.CIFAR10Dataset(evil, train=False)
    assert not marker.exists()

    with open(os.path.join(evil, "test_batch"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}, f)
    with pytest.raises(ValueError, match="3072"):
        data.CIFAR10Dataset(evil, train=False)
    with open(os.path.join(evil, "test_batch"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, f)
    with pytest.raises(ValueError, match="labels"):
        data.CIFAR10Dataset(evil, train=False)


# --------------------------------------------------------------------------------------
# Penn Treebank

TRAIN_TXT = " the cat sat\n the dog\n\n a cat ran fast\n"
TEST_TXT = " the bird sat\n zebra\n"


@pytest.fixture
def ptb_dir(tmp_path):
    (tmp_path / "train.txt").write_text(TRAIN_TXT)
    (tmp_path / "test.txt").write_text(TEST_TXT)
    return str(tmp_path)


def test_dictionary():
    d = data.Dictionary()
    assert len(d) == 0
    assert [d.add_word(w) for w in ["x", "y", "x", "z"]] == [0, 1, 0, 2]
    assert d.word2idx == {"x": 0, "y": 1, "z": 2} and d.idx2word == ["x", "y", "z"]
    assert len(d) == 3


def test_corpus(ptb_dir):
    c = data.Corpus(ptb_dir)
    words = ["the", "cat", "sat", "<eos>", "dog", "a", "ran", "fast", "bird", "zebra"]
    assert c.dictionary.idx2word == words and len(c.dictionary) == 10
    ids = {w: i for i, w in enumerate(words)}
    train_words = "the cat sat <eos> the dog <eos> <eos> a cat ran fast <eos>".split()
    test_words = "the bird sat <eos> zebra <eos>".split()
    assert c.train == [ids[w] for w in train_words]
    assert c.test == [ids[w] for w in test_words]
    c2 = data.Corpus(ptb_dir, max_lines=1)
    assert c2.train == [0, 1, 2, 3] and c2.test == [0, 4, 2, 3]
    assert c2.dictionary.idx2word == ["the", "cat", "sat", "<eos>", "bird"]
    with pytest.raises(FileNotFoundError):
        data.Corpus(os.path.join(ptb_dir, "nowhere"))


def test_batchify():
    seq = list(range(23))
    got = data.batchify(seq, 4, ndl.cpu(), "float32")
    expect = np.array([[0, 5, 10, 15], [1, 6, 11, 16], [2, 7, 12, 17],
                       [3, 8, 13, 18], [4, 9, 14, 19]])
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, expect)
    assert data.batchify(seq, 30, None, None).shape == (0, 30)
    with pytest.raises(ValueError):
        data.batchify(seq, 0, None, None)


def test_get_batch(device):
    batches = np.arange(5 * 3).reshape(5, 3) * 2               # rows 0..4, bs 3
    X, y = data.get_batch(batches, np.int64(1), 2, device=device)
    assert type(X) is ndl.Tensor and type(y) is ndl.Tensor
    assert X.shape == (2, 3) and y.shape == (6,)
    assert X.dtype == "float32" and y.dtype == "float32"
    assert X.device == device and y.device == device
    assert isinstance(X.cached_data, ndl.NDArray)
    np.testing.assert_array_equal(X.numpy(), [[6, 8, 10], [12, 14, 16]])
    np.testing.assert_array_equal(y.numpy(), [12, 14, 16, 18, 20, 22])
    # near the end the window shrinks: L = min(bptt, len - 1 - i)
    X, y = data.get_batch(batches, 3, 40)
    assert X.shape == (1, 3) and y.shape == (3,)
    np.testing.assert_array_equal(y.numpy(), [24, 26, 28])
    X, y = data.get_batch(batches, 0, 40, device=ndl.cpu_numpy(), dtype="float32")
    assert X.shape == (4, 3) and X.device == ndl.cpu_numpy()
    with pytest.raises(ValueError):
        data.get_batch(batches, 4, 2)


def test_ptb_pipeline(ptb_dir):
    c = data.Corpus(ptb_dir)
    train = data.batchify(c.train, 2, ndl.cpu(), "float32")
    nbatch = len(c.train) // 2
    assert train.shape == (nbatch, 2)
    np.testing.assert_array_equal(train[:, 1], c.train[nbatch:2 * nbatch])
    X, y = data.get_batch(train, 0, 3)
    np.testing.assert_array_equal(X.numpy()[:, 0], c.train[0:3])
    np.testing.assert_array_equal(y.numpy().reshape(3, 2)[:, 0], c.train[1:4])


# --------------------------------------------------------------------------------------
# np mode: the loader's Tensors keep NumPy dtypes (API.md 1.3)

NP_MODE_SCRIPT = """
import numpy as np, needle as ndl
X = np.random.rand(5, 2); y = np.arange(5, dtype=np.uint8)
(xb, yb), = ndl.data.DataLoader(ndl.data.NDArrayDataset(X, y), batch_size=8)
assert type(xb.cached_data) is np.ndarray and xb.dtype == np.float64, xb.dtype
assert yb.dtype == np.uint8 and (yb.numpy() == y).all()
X, t = ndl.data.get_batch(np.arange(6).reshape(3, 2), 0, 5)
assert X.dtype == np.float32 and X.shape == (2, 2) and t.shape == (4,)
print("ok")
"""


def test_np_mode_loader():
    env = dict(os.environ, NEEDLE_BACKEND="np")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", NP_MODE_SCRIPT], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
