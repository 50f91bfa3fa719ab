"""The main job: train MLPResNet (or a convolutional ResNet) on Fashion-MNIST with needle.

    python apps/train_fashion_mnist.py                       # train, report, plot, checkpoint
    python apps/train_fashion_mnist.py --evaluate checkpoints/fashion_mlp.safetensors
    python apps/train_fashion_mnist.py --model cnn           # ResNet9's design, 1x28x28
    mpirun -np 2 python apps/train_fashion_mnist.py --distributed   # data-parallel over MPI

Prints a progress bar per epoch (loss, accuracy, samples/s), the final test
accuracy, writes a PNG of the loss/accuracy curves and a checkpoint that
`--evaluate` loads. Data: the IDX files of Debian's dataset-fashion-mnist
(`apt-get install dataset-fashion-mnist`) or any directory holding the four
MNIST-format files.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time

import numpy as np
from tqdm.auto import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]

import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402
from mlp_resnet import MLPResNet  # noqa: E402

# --model cnn settings that differ from the MLP's
CNN_DEFAULTS = {"epochs": 4, "lr": 0.003, "channels": "12,24,48,64",
                "checkpoint": "checkpoints/fashion_cnn.safetensors",
                "plot": "checkpoints/fashion_cnn.png"}
MLP_DEFAULTS = {"epochs": 10, "lr": 0.002, "channels": None,
                "checkpoint": "checkpoints/fashion_mlp.safetensors",
                "plot": "checkpoints/fashion_mlp.png"}


def build_model(config: dict, drop_prob: float = 0.0):
    if config.get("model", "mlp") == "cnn":
        from models import FashionResNet

        return FashionResNet(tuple(config["channels"]))
    return MLPResNet(784, config["hidden"], num_blocks=config["blocks"], drop_prob=drop_prob)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEFAULT_DIRS = ["data/fashion-mnist", "/usr/share/dataset-fashion-mnist",
                "/usr/share/fashion-mnist", "/usr/share/datasets/fashion-mnist"]
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]


def find_files(data_dir: str | None) -> dict:
    """Paths of the four IDX files (gzipped or not), or exit with one clear line."""
    dirs = [data_dir] if data_dir else DEFAULT_DIRS
    for d in dirs:
        found = {}
        for key, name in FILES.items():
            hits = sorted(glob.glob(os.path.join(d, "**", name + "*"), recursive=True))
            if hits:
                found[key] = hits[0]
        if len(found) == len(FILES):
            return found
    sys.exit(f"error: no Fashion-MNIST IDX files ({', '.join(FILES.values())}[.gz]) found in "
             f"{', '.join(dirs)}; install them with `apt-get install dataset-fashion-mnist` "
             f"or pass --data-dir DIR")


class Progress:
    """The epoch's progress bar, drawn by tqdm.auto (a widget in notebooks): samples done,
    samples/s, the running loss and metric."""

    def __init__(self, total: int, label: str, metric=None):
        # metric(loss, value) -> the text after the loss; accuracy by default
        self.metric = metric or (lambda loss, acc: f"acc {100 * acc:5.2f}%")
        self.done = 0
        self.bar = tqdm(total=total, desc=label, unit="samples", unit_scale=True, file=sys.stdout,
                        mininterval=0.1 if sys.stdout.isatty() else 5.0, dynamic_ncols=True)

    def update(self, done: int, loss: float, acc: float, final: bool = False):
        self.bar.set_postfix_str(f"loss {loss:.4f} {self.metric(loss, acc)}", refresh=False)
        self.bar.update(done - self.done)
        self.done = done
        if final:
            self.bar.close()


def run_epoch(loader, model, n, opt=None, label="", lr_at=None):
    """One pass; returns (loss, accuracy) averaged over the samples.

    lr_at(fraction_of_epoch_done), if given, sets the optimizer's learning rate
    before every step (the cosine schedule of main)."""
    loss_fn = nn.SoftmaxLoss()
    model.train() if opt is not None else model.eval()
    bar = Progress(n, label)
    correct, loss_sum, seen = 0, 0.0, 0
    for X, y in loader:
        if opt is None:
            with ndl.no_grad():
                logits = model(X)
                loss = loss_fn(logits, y)
        else:
            logits = model(X)
            loss = loss_fn(logits, y)
            opt.reset_grad()
            loss.backward(create_graph=False)
            if lr_at is not None:
                opt.lr = lr_at(seen / n)
            opt.step()
        b = y.shape[0]
        correct += int((logits.numpy().argmax(axis=1) == y.numpy()).sum())
        loss_sum += float(loss.numpy()) * b
        seen += b
        bar.update(seen, loss_sum / seen, correct / seen)
    bar.update(seen, loss_sum / seen, correct / seen, final=True)
    return loss_sum / seen, correct / seen


def save_checkpoint(path: str, model, config: dict) -> None:
    """The model's state_dict and its config in one safetensors file (needle.save)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ndl.save({"config": config, "model": model.state_dict()}, path)


def load_checkpoint(path: str):
    """(model, config) from a save_checkpoint file; needle.load runs no code from it."""
    ckpt = ndl.load(path)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint of this job (no 'config' and 'model')")
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model, ckpt["config"]


def plot(history: dict, path: str, title: str = "MLPResNet") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["train_loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, history["train_loss"], "o-", label="train")
    ax1.plot(epochs, history["test_loss"], "o-", label="test")
    ax1.set(xlabel="epoch", ylabel="softmax loss", title="Loss")
    ax2.plot(epochs, [100 * a for a in history["train_acc"]], "o-", label="train")
    ax2.plot(epochs, [100 * a for a in history["test_acc"]], "o-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"needle {title} on Fashion-MNIST")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)


def setup_distributed() -> None:
    """Join the MPI world; ranks other than 0 print nothing; one rank's share of the cores."""
    ndl.distributed.init()
    if ndl.distributed.rank() != 0:
        sys.stdout = open(os.devnull, "w")
        os.environ["TQDM_DISABLE"] = "1"
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", ndl.distributed.world_size()))
    if "NEEDLE_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        if cores >= (os.cpu_count() or 1):  # not bound to cores of its own: share them
            cores //= local
        ndl.backend_ndarray.set_num_threads(max(1, cores))


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                    help="MLPResNet, or ResNet9's convolutional design adapted to 28x28")
    ap.add_argument("--epochs", type=int, default=None, help="default 10 (mlp), 4 (cnn)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate; default 0.002 (mlp), 0.003 (cnn)")
    ap.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                    help="learning rate over the run: cosine decay to 0, or constant")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--hidden", type=int, default=512, help="MLPResNet hidden size")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--channels", default=None, help="cnn: the four conv widths (12,24,48,64)")
    ap.add_argument("--data-dir", default=None, help="directory with the four IDX files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None,
                    help="default checkpoints/fashion_<model>.safetensors")
    ap.add_argument("--plot", default=None, help="PNG of the curves ('' for none); default "
                    "checkpoints/fashion_<model>.png")
    ap.add_argument("--evaluate", metavar="CHECKPOINT", help="only evaluate a saved checkpoint")
    ap.add_argument("--distributed", action="store_true",
                    help="data-parallel over the MPI ranks (launch with mpirun -np N); "
                    "--batch-size is per rank, only rank 0 prints and writes files")
    args = ap.parse_args(argv)
    if args.distributed:
        setup_distributed()
    for k, v in (CNN_DEFAULTS if args.model == "cnn" else MLP_DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    files = find_files(args.data_dir)
    try:
        test_set = ndl.data.MNISTDataset(files["test_images"], files["test_labels"])
        train_set = None if args.evaluate else ndl.data.MNISTDataset(files["train_images"],
                                                                      files["train_labels"])
    except (OSError, ValueError) as e:  # corrupt or truncated IDX files: one clear line
        sys.exit(f"error: cannot read Fashion-MNIST from {os.path.dirname(files['test_images'])}: "
                 f"{e}")
    test_loader = ndl.data.DataLoader(test_set, 1000)
    if args.evaluate:
        model, config = load_checkpoint(args.evaluate)
        loss, acc = run_epoch(test_loader, model, len(test_set), label="test ")
        print(f"checkpoint {args.evaluate} ({config}): test accuracy {100 * acc:.2f}%, "
              f"loss {loss:.4f}")
        return acc

    np.random.seed(args.seed)
    sampler, n_train = None, len(train_set)
    if args.distributed:  # each rank its share of a seed-plus-epoch shuffle
        sampler = ndl.distributed.DistributedSampler(train_set, shuffle=True, seed=args.seed)
        n_train = len(sampler)
        train_loader = ndl.data.DataLoader(train_set, args.batch_size, sampler=sampler)
    else:
        train_loader = ndl.data.DataLoader(train_set, args.batch_size, shuffle=True)
    if args.model == "cnn":
        config = {"model": "cnn", "channels": [int(c) for c in args.channels.split(",")]}
        title = f"FashionResNet(channels={tuple(config['channels'])})"
    else:
        config = {"model": "mlp", "hidden": args.hidden, "blocks": args.blocks}
        title = f"MLPResNet(784, hidden={args.hidden}, blocks={args.blocks})"
    model = build_model(config, drop_prob=args.dropout)
    if args.distributed:
        model = ndl.distributed.DistributedDataParallel(model)
    if args.optimizer == "adam":
        opt = ndl.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = ndl.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                            weight_decay=args.weight_decay)
    print(f"needle {title} on Fashion-MNIST: "
          f"{len(train_set)} train / {len(test_set)} test images, {args.optimizer} lr={args.lr}, "
          f"batch {args.batch_size}, {ndl.backend_ndarray.get_num_threads()} threads"
          + (f" x {ndl.distributed.world_size()} ranks" if args.distributed else ""))
    history = {"train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
    start = time.perf_counter()
    for e in range(1, args.epochs + 1):
        def lr_at(frac, e=e):
            if args.schedule == "constant":
                return args.lr
            return 0.5 * args.lr * (1 + math.cos(math.pi * (e - 1 + frac) / args.epochs))
        if sampler is not None:
            sampler.set_epoch(e)
        tl, ta = run_epoch(train_loader, model, n_train, opt,
                           label=f"epoch {e}/{args.epochs}", lr_at=lr_at)
        vl, va = run_epoch(test_loader, model, len(test_set), label=f"  test {e}/{args.epochs}")
        for k, v in zip(history, (tl, ta, vl, va)):
            history[k].append(v)
    elapsed = time.perf_counter() - start
    if args.distributed:
        model = model.module  # the checkpoint loads without DDP
        if ndl.distributed.rank() != 0:
            return history["test_acc"][-1]
    save_checkpoint(args.checkpoint, model, config)
    if args.plot:
        plot(history, args.plot, title.split("(")[0])
    print(f"final test accuracy {100 * history['test_acc'][-1]:.2f}% after {args.epochs} epochs "
          f"in {elapsed:.0f} s; checkpoint {args.checkpoint}, curves {args.plot}")
    print(f"evaluate again with: python apps/train_fashion_mnist.py --evaluate {args.checkpoint}")
    return history["test_acc"][-1]


if __name__ == "__main__":
    main()
