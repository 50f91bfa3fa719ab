"""Training helpers of the course's homeworks (API.md 9.2), on needle.

Every helper that trains or evaluates starts with np.random.seed(4), which is
part of the course's reference numbers.
"""
import gzip
import os
import struct
import sys

import numpy as np

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402

try:
    from apps.models import *  # noqa: F401,F403,E402
except ImportError:  # run from inside apps/
    from models import *  # noqa: F401,F403,E402

device = ndl.cpu()


def parse_mnist(image_filename, label_filename):
    """(X float32 (N, 784) in [0, 1], y uint8 (N,)) from gzipped IDX files."""
    with gzip.open(image_filename, "rb") as f:
        _, n, rows, cols = struct.unpack(">4i", f.read(16))
        X = np.frombuffer(f.read(), dtype=np.uint8).reshape(n, rows * cols)
    with gzip.open(label_filename, "rb") as f:
        struct.unpack(">2i", f.read(8))
        y = np.frombuffer(f.read(), dtype=np.uint8)
    return X.astype(np.float32) / 255.0, y.copy()


def softmax_loss(Z, y_one_hot):
    """Average softmax loss of logits Z (B, k) against one-hot labels, as a Tensor."""
    batch = Z.shape[0]
    lse = ndl.log(ndl.exp(Z).sum(axes=(1,)))
    return (lse.sum() - (Z * y_one_hot).sum()) / batch


def nn_epoch(X, y, W1, W2, lr=0.1, batch=100):
    """One in-order SGD epoch of relu(X @ W1) @ W2; returns the new (W1, W2)."""
    k = W2.shape[1]
    for i in range(0, X.shape[0], batch):
        Xb = ndl.Tensor(X[i:i + batch], requires_grad=False)
        yb = y[i:i + batch]
        Iy = np.zeros((yb.shape[0], k), dtype=np.float32)
        Iy[np.arange(yb.shape[0]), yb] = 1
        loss = softmax_loss(ndl.relu(Xb @ W1) @ W2, ndl.Tensor(Iy, requires_grad=False))
        loss.backward()
        W1 = ndl.Tensor(W1.numpy() - lr * W1.grad.numpy())
        W2 = ndl.Tensor(W2.numpy() - lr * W2.grad.numpy())
    return W1, W2


def loss_err(h, y):
    """(softmax loss, error rate) of logits h against integer labels y."""
    y_one_hot = np.zeros((y.shape[0], h.shape[-1]))
    y_one_hot[np.arange(y.size), y] = 1
    y_ = ndl.Tensor(y_one_hot)
    return softmax_loss(h, y_).numpy(), np.mean(h.numpy().argmax(axis=1) != y)


def _model_device(model):
    params = model.parameters()
    return params[0].device if params else device


def epoch_general_cifar10(dataloader, model, loss_fn=nn.SoftmaxLoss(), opt=None):
    """One pass; returns (accuracy, average loss)."""
    np.random.seed(4)
    model.train() if opt is not None else model.eval()
    dev = _model_device(model)
    correct, loss_sum, count = 0, 0.0, 0
    for X, y in dataloader:
        X = ndl.Tensor(X.cached_data, device=dev, requires_grad=False)
        y = ndl.Tensor(y.cached_data, device=dev, requires_grad=False)
        out = model(X)
        loss = loss_fn(out, y)
        if opt is not None:
            opt.reset_grad()
            loss.backward()
            opt.step()
        n = y.shape[0]
        correct += int((out.numpy().argmax(axis=1) == y.numpy()).sum())
        loss_sum += float(loss.numpy()) * n
        count += n
    return correct / count, loss_sum / count


def train_cifar10(model, dataloader, n_epochs=1, optimizer=ndl.optim.Adam, lr=0.001,
                  weight_decay=0.001, loss_fn=nn.SoftmaxLoss):
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss = loss_fn()
    for _ in range(n_epochs):
        acc, avg_loss = epoch_general_cifar10(dataloader, model, loss, opt)
    return acc, avg_loss


def evaluate_cifar10(model, dataloader, loss_fn=nn.SoftmaxLoss):
    np.random.seed(4)
    return epoch_general_cifar10(dataloader, model, loss_fn())


def epoch_general_ptb(data, model, seq_len=40, loss_fn=nn.SoftmaxLoss(), opt=None, clip=None,
                      device=None, dtype="float32"):
    """One pass over batchified data; the hidden state is carried and detached."""
    np.random.seed(4)
    model.train() if opt is not None else model.eval()
    nbatch = data.shape[0]
    h = None
    correct, loss_sum, count = 0, 0.0, 0
    for i in range(0, nbatch - 1, seq_len):
        X, y = ndl.data.get_batch(data, i, seq_len, device=device, dtype=dtype)
        out, h = model(X, h)
        loss = loss_fn(out, y)
        if opt is not None:
            opt.reset_grad()
            loss.backward()
            if clip is not None:
                opt.clip_grad_norm(clip)
            opt.step()
        h = tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()
        n = y.shape[0]
        correct += int((out.numpy().argmax(axis=1) == y.numpy()).sum())
        loss_sum += float(loss.numpy()) * n
        count += n
    return correct / count, loss_sum / count


def train_ptb(model, data, seq_len=40, n_epochs=1, optimizer=ndl.optim.SGD, lr=4.0,
              weight_decay=0.0, loss_fn=nn.SoftmaxLoss, clip=None, device=None, dtype="float32"):
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(n_epochs):
        acc, avg_loss = epoch_general_ptb(data, model, seq_len, loss_fn(), opt, clip, device, dtype)
    return acc, avg_loss


def evaluate_ptb(model, data, seq_len=40, loss_fn=nn.SoftmaxLoss, device=None, dtype="float32"):
    np.random.seed(4)
    return epoch_general_ptb(data, model, seq_len, loss_fn(), None, None, device, dtype)
