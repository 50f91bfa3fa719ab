"""Run by tests/test_distributed.py, under mpirun -np 2 or as plain python (one rank).

Trains an MLP on synthetic 10-class data with DDP and a DistributedSampler
(global batch = ranks x --batch), then rank 0 writes OUT/result.npz with the
test accuracy and the final parameters."""
import argparse

import numpy as np

import needle as ndl
import needle.distributed as dist
import needle.nn as nn

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--epochs", type=int, default=3)
args = ap.parse_args()
dist.init()
data = np.random.RandomState(3)
centers = data.randn(10, 20) * 2.0
labels = data.randint(0, 10, 2560)
X = (centers[labels] + data.randn(2560, 20) * 1.5).astype(np.float32)
train = ndl.data.NDArrayDataset(X[:2048], labels[:2048])
np.random.seed(0)
model = dist.DistributedDataParallel(
    nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10)))
sampler = dist.DistributedSampler(train, shuffle=True, seed=5)
loader = ndl.data.DataLoader(train, args.batch, sampler=sampler)
opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
loss_fn = nn.SoftmaxLoss()
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for xb, yb in loader:
        opt.reset_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()
logits = model(ndl.Tensor(X[2048:], requires_grad=False)).numpy()
acc = float((logits.argmax(1) == labels[2048:]).mean())
if dist.rank() == 0:
    np.savez(f"{args.out}/result.npz", acc=acc,
             **{f"p{i}": p.numpy() for i, p in enumerate(model.parameters())})
