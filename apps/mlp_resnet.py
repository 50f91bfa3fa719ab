"""MLP ResNet for MNIST-style data (API.md 9.1).

>>> model = MLPResNet(784, hidden_dim=100)          # seeded by the import-time np.random.seed(0)
>>> train_mnist(data_dir="data")                    # (train_err, train_loss, test_err, test_loss)
"""
import os
import sys

import numpy as np

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402

# NOTE: part of the course's numbers (API.md 9): seeded at import time.
np.random.seed(0)


def ResidualBlock(dim, hidden_dim, norm=nn.BatchNorm1d, drop_prob=0.1):
    return nn.Sequential(
        nn.Residual(nn.Sequential(
            nn.Linear(dim, hidden_dim), norm(hidden_dim), nn.ReLU(), nn.Dropout(drop_prob),
            nn.Linear(hidden_dim, dim), norm(dim))),
        nn.ReLU())


def MLPResNet(dim, hidden_dim=100, num_blocks=3, num_classes=10, norm=nn.BatchNorm1d,
              drop_prob=0.1):
    return nn.Sequential(
        nn.Linear(dim, hidden_dim), nn.ReLU(),
        *[ResidualBlock(hidden_dim, hidden_dim // 2, norm, drop_prob) for _ in range(num_blocks)],
        nn.Linear(hidden_dim, num_classes))


def epoch(dataloader, model, opt=None):
    """One pass; returns (error_rate, average_loss) over the whole dataset."""
    np.random.seed(4)
    loss_fn = nn.SoftmaxLoss()
    model.train() if opt is not None else model.eval()
    errors, loss_sum, count = 0, 0.0, 0
    for X, y in dataloader:
        logits = model(X)
        loss = loss_fn(logits, y)
        if opt is not None:
            opt.reset_grad()
            loss.backward()
            opt.step()
        n = y.shape[0]
        errors += int((logits.numpy().argmax(axis=1) != y.numpy()).sum())
        loss_sum += float(loss.numpy()) * n
        count += n
    return errors / count, loss_sum / count


def mnist_loaders(batch_size, data_dir):
    """Train (shuffled) and test loaders over the four standard MNIST file names."""
    def path(name):
        return os.path.join(data_dir, name)

    train = ndl.data.MNISTDataset(path("train-images-idx3-ubyte.gz"),
                                  path("train-labels-idx1-ubyte.gz"))
    test = ndl.data.MNISTDataset(path("t10k-images-idx3-ubyte.gz"),
                                 path("t10k-labels-idx1-ubyte.gz"))
    return (ndl.data.DataLoader(train, batch_size, shuffle=True),
            ndl.data.DataLoader(test, batch_size, shuffle=False))


def train_mnist(batch_size=100, epochs=10, optimizer=ndl.optim.Adam, lr=0.001,
                weight_decay=0.001, hidden_dim=100, data_dir="data"):
    np.random.seed(4)
    train_loader, test_loader = mnist_loaders(batch_size, data_dir)
    model = MLPResNet(784, hidden_dim)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        train_err, train_loss = epoch(train_loader, model, opt)
    test_err, test_loss = epoch(test_loader, model)
    return train_err, train_loss, test_err, test_loss


if __name__ == "__main__":
    print(train_mnist(data_dir="data"))
