"""apps/: MLPResNet against the same model in PyTorch, the simple_ml helpers
against NumPy, and the Fashion-MNIST job end to end on small IDX files."""
import gzip
import os
import struct
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]

import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402
import mlp_resnet  # noqa: E402
import simple_ml  # noqa: E402
import train_fashion_mnist as job  # noqa: E402


def write_idx(folder, prefix, images, labels, gz=True):
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), "wb") as f:
        f.write(struct.pack(">4i", 2051, len(images), 28, 28) + images.astype(np.uint8).tobytes())
    with opener(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), "wb") as f:
        f.write(struct.pack(">2i", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def toy_mnist(folder, n_train=2000, n_test=200, seed=0):
    """Class c is a bright square at a position of its own: learnable in one epoch."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(y):
            r, col = 2 + 2 * (c // 5) * 6, 2 + (c % 5) * 5
            x[i, r:r + 5, col:col + 4] = 250
        return x, y

    write_idx(folder, "train", *make(n_train))
    write_idx(folder, "t10k", *make(n_test))


def torch_mlp_resnet(dim, hidden, blocks, classes):
    class Residual(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x) + x

    def block(d, h):
        return torch.nn.Sequential(Residual(torch.nn.Sequential(
            torch.nn.Linear(d, h), torch.nn.BatchNorm1d(h), torch.nn.ReLU(), torch.nn.Dropout(0.0),
            torch.nn.Linear(h, d), torch.nn.BatchNorm1d(d))), torch.nn.ReLU())

    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(),
                               *[block(hidden, hidden // 2) for _ in range(blocks)],
                               torch.nn.Linear(hidden, classes))


@pytest.mark.parametrize("dim, hidden, blocks, classes", [(784, 100, 3, 10), (20, 16, 2, 5)])
def test_mlp_resnet_matches_torch(dim, hidden, blocks, classes):
    model = mlp_resnet.MLPResNet(dim, hidden, num_blocks=blocks, num_classes=classes, drop_prob=0.0)
    ref = torch_mlp_resnet(dim, hidden, blocks, classes)
    ours = model.parameters()
    theirs = [p for p in ref.parameters()]
    assert len(ours) == len(theirs)
    assert sum(int(np.prod(p.shape)) for p in ours) == sum(p.numel() for p in theirs)
    # copy needle's weights into torch: Linear weights are (in, out) here, (out, in) there
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            a = p.numpy()
            q.copy_(torch.from_numpy(a.T.copy() if q.dim() == 2 else a.reshape(q.shape)))
    x = np.random.randn(8, dim).astype(np.float32)
    y = np.random.randint(0, classes, 8)
    out = model(ndl.Tensor(x))
    loss = nn.SoftmaxLoss()(out, ndl.Tensor(y))
    loss.backward()
    xt = torch.from_numpy(x)
    out_t = ref(xt)
    loss_t = torch.nn.functional.cross_entropy(out_t, torch.from_numpy(y))
    loss_t.backward()
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), rtol=1e-4, atol=1e-4)
    for p, q in zip(ours, theirs):
        g = q.grad.numpy()
        np.testing.assert_allclose(p.grad.numpy(), g.T if g.ndim == 2 else g.reshape(p.shape),
                                   rtol=1e-3, atol=1e-4)


def test_epoch_returns_error_rate_and_loss(tmp_path):
    toy_mnist(str(tmp_path))
    train, test = mlp_resnet.mnist_loaders(50, str(tmp_path))
    model = mlp_resnet.MLPResNet(784, 32)
    err, loss = mlp_resnet.epoch(test, model)
    assert 0.0 <= err <= 1.0 and loss > 0
    # recompute the evaluation independently: eval mode is deterministic
    X, y = test.dataset[np.arange(len(test.dataset))][:2]
    logits = model(ndl.Tensor(X)).numpy()
    np.testing.assert_allclose(err, np.mean(logits.argmax(axis=1) != y))
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    np.testing.assert_allclose(loss, np.mean(lse - logits[np.arange(len(y)), y]), rtol=1e-4)


def test_train_mnist_learns_the_toy_task(tmp_path):
    toy_mnist(str(tmp_path))
    train_err, train_loss, test_err, test_loss = mlp_resnet.train_mnist(
        batch_size=50, epochs=3, hidden_dim=32, data_dir=str(tmp_path))
    assert test_err < 0.2 and test_loss < 1.0, (test_err, test_loss)


def test_simple_ml_softmax_loss_and_nn_epoch():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 5)).astype(np.float32)
    y = rng.integers(0, 3, 50).astype(np.uint8)
    W1 = rng.standard_normal((5, 10)).astype(np.float32) / 5
    W2 = rng.standard_normal((10, 3)).astype(np.float32) / 3
    Z = rng.standard_normal((50, 3)).astype(np.float32)
    onehot = np.eye(3, dtype=np.float32)[y]
    loss = simple_ml.softmax_loss(ndl.Tensor(Z), ndl.Tensor(onehot)).numpy()
    ref = np.mean(np.log(np.exp(Z).sum(1)) - Z[np.arange(50), y])
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    # one in-order SGD epoch against the same computation written in NumPy
    n1, n2 = simple_ml.nn_epoch(X, y, ndl.Tensor(W1), ndl.Tensor(W2), lr=0.1, batch=25)
    w1, w2 = W1.astype(np.float64), W2.astype(np.float64)
    for i in range(0, 50, 25):
        xb, yb = X[i:i + 25].astype(np.float64), y[i:i + 25]
        h = np.maximum(xb @ w1, 0)
        z = h @ w2
        s = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        s[np.arange(len(yb)), yb] -= 1
        g2 = h.T @ s / len(yb)
        g1 = xb.T @ ((s @ w2.T) * (h > 0)) / len(yb)
        w1, w2 = w1 - 0.1 * g1, w2 - 0.1 * g2
    np.testing.assert_allclose(n1.numpy(), w1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(n2.numpy(), w2, rtol=1e-4, atol=1e-5)


def test_parse_mnist(tmp_path):
    images = np.random.randint(0, 256, (7, 28, 28))
    labels = np.random.randint(0, 10, 7)
    write_idx(str(tmp_path), "train", images, labels)
    X, y = simple_ml.parse_mnist(str(tmp_path / "train-images-idx3-ubyte.gz"),
                                 str(tmp_path / "train-labels-idx1-ubyte.gz"))
    assert X.dtype == np.float32 and X.shape == (7, 784) and y.dtype == np.uint8
    np.testing.assert_allclose(X, images.reshape(7, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)


def test_fashion_job_end_to_end(tmp_path, capsys):
    """Train (progress bar, final accuracy, plot, checkpoint), then evaluate the checkpoint."""
    data = tmp_path / "data"
    data.mkdir()
    toy_mnist(str(data))
    ckpt, plot = str(tmp_path / "m.npz"), str(tmp_path / "m.png")
    # NOTE: matplotlib's own C extensions abort under AddressSanitizer (make asan): no plot there
    asan = bool(os.environ.get("NEEDLE_ASAN_RUN"))
    acc = job.main(["--data-dir", str(data), "--epochs", "2", "--hidden", "32",
                    "--batch-size", "50", "--checkpoint", ckpt, "--plot", "" if asan else plot])
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "samples/s" in out and "final test accuracy" in out
    assert acc > 0.8, out
    if not asan:
        assert os.path.getsize(plot) > 1000
        with open(plot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    again = job.main(["--data-dir", str(data), "--evaluate", ckpt])
    assert again == pytest.approx(acc)


def test_fashion_job_missing_data_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        job.main(["--data-dir", str(tmp_path / "nowhere"), "--epochs", "1"])
    msg = str(e.value)
    assert "nowhere" in msg and "dataset-fashion-mnist" in msg and "\n" not in msg


def test_fashion_job_corrupt_data_is_one_clear_line(tmp_path):
    toy_mnist(str(tmp_path))
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">4i", 1234, 10, 28, 28))  # wrong magic, no data
    with pytest.raises(SystemExit) as e:
        job.main(["--data-dir", str(tmp_path), "--epochs", "1"])
    msg = str(e.value)
    assert msg.startswith("error: cannot read Fashion-MNIST") and "\n" not in msg, msg
