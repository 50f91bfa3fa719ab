"""Train a word-level language model with needle on real English text.

    python apps/train_lm.py                          # LSTM on Debian's fortunes
    python apps/train_lm.py --seq-model rnn --epochs 2
    python apps/train_lm.py --seq-model transformer  # a causal Transformer, same text
    python apps/train_lm.py --evaluate checkpoints/fortunes_lstm.safetensors --temperature 0.8

The text is every fortune of Debian's `fortunes` package (`dpkg -L fortunes`,
installed with apt-get when missing), lower-cased, with punctuation split
off and words outside the `--vocab` most frequent ones replaced by <unk>.
Fortunes go to a train or a held-out file (one in ten, deterministically),
which `needle.data.Corpus` tokenizes. Prints a progress bar per epoch, train
and held-out perplexity epoch by epoch, writes a PNG of the curves and a
checkpoint, and prints text sampled from the trained model.
"""
from __future__ import annotations

import argparse
import collections
import glob
import math
import os
import re
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]

import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402
from models import LanguageModel  # noqa: E402
from train_fashion_mnist import Progress  # noqa: E402

FORTUNE_DIR = "/usr/share/games/fortunes"
TOKEN = re.compile(r"[a-z0-9']+|[.,!?;:\"()-]")


def fortune_files(data_dir: str) -> list:
    """The text files of a fortunes directory (not the .dat indexes)."""
    files = sorted(f for f in glob.glob(os.path.join(data_dir, "*"))
                   if os.path.isfile(f) and not f.endswith((".dat", ".u8", ".gz")))
    if not files:
        sys.exit(f"error: no fortune files in {data_dir}; install them with "
                 f"`apt-get install fortunes` or pass --data-dir DIR")
    return files


def prepare_corpus(data_dir: str, vocab: int, out_dir: str, max_fortunes: int | None) -> dict:
    """Write out_dir/train.txt and test.txt (one fortune per line); return stats."""
    fortunes = []
    for path in fortune_files(data_dir):
        with open(path, encoding="utf-8", errors="replace") as f:
            for text in f.read().split("\n%\n"):
                words = TOKEN.findall(text.lower())
                if words:
                    fortunes.append(words)
    if max_fortunes:
        fortunes = fortunes[:max_fortunes]
    counts = collections.Counter(w for words in fortunes for w in words)
    keep = {w for w, _ in counts.most_common(vocab - 2)}  # room for <unk> and <eos>
    n_tokens = {"train": 0, "test": 0}
    with open(os.path.join(out_dir, "train.txt"), "w") as tr, \
            open(os.path.join(out_dir, "test.txt"), "w") as te:
        for i, words in enumerate(fortunes):
            split = "test" if i % 10 == 9 else "train"
            line = " ".join(w if w in keep else "<unk>" for w in words)
            (te if split == "test" else tr).write(line + "\n")
            n_tokens[split] += len(words) + 1
    return {"fortunes": len(fortunes), "distinct words": len(counts), **n_tokens}


def run_epoch(model, batches, seq_len, opt=None, label="", clip=None):
    """One pass over the batchified ids; returns the mean loss per token."""
    loss_fn = nn.SoftmaxLoss()
    model.train() if opt is not None else model.eval()
    n_rows = batches.shape[0] - 1
    bar = Progress(n_rows * batches.shape[1], label,
                   metric=lambda loss, _: f"perplexity {math.exp(min(loss, 50)):8.1f}")
    h, loss_sum, seen = None, 0.0, 0
    for i in range(0, n_rows, seq_len):
        X, y = ndl.data.get_batch(batches, i, seq_len)
        if opt is None:
            with ndl.no_grad():
                logits, h = model(X, h)
                loss = loss_fn(logits, y)
        else:
            logits, h = model(X, h)
            loss = loss_fn(logits, y)
            opt.reset_grad()
            loss.backward(create_graph=False)
            if clip is not None:
                opt.clip_grad_norm(clip)
            opt.step()
        h = tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()
        n = y.shape[0]
        loss_sum += float(loss.numpy()) * n
        seen += n
        bar.update(seen, loss_sum / seen, 0.0)
    bar.update(seen, loss_sum / seen, 0.0, final=True)
    return loss_sum / seen


def sample(model, dictionary, n_words: int, temperature: float, rng) -> str:
    """Words drawn one by one from the model's softmax at `temperature`."""
    model.eval()
    word = dictionary.word2idx["<eos>"]
    h, out, context = None, [], [word]
    # a Transformer keeps no state: it reads the last `sequence_len` words each step
    window = getattr(model.seq_model, "sequence_len", None)
    with ndl.no_grad():
        for _ in range(n_words):
            ids = context[-window:] if window else [word]
            X = ndl.Tensor(np.array(ids, dtype=np.float32).reshape((-1, 1)),
                           requires_grad=False)
            logits, h = model(X, None if window else h)
            z = logits.numpy()[-1].astype(np.float64) / max(temperature, 1e-6)
            p = np.exp(z - z.max())
            word = int(rng.choice(len(p), p=p / p.sum()))
            context.append(word)
            token = dictionary.idx2word[word]
            out.append("\n" if token == "<eos>" else token)
    return " ".join(out).replace(" \n ", "\n").strip()


def save_checkpoint(path, model, config, words):
    """State dict, config and vocabulary in one safetensors file (needle.save)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ndl.save({"config": config, "words": list(words), "model": model.state_dict()}, path)


def load_checkpoint(path):
    """(model, config, dictionary) from a save_checkpoint file (no code runs from it)."""
    ckpt = ndl.load(path)
    if not isinstance(ckpt, dict) or not {"config", "words", "model"} <= set(ckpt):
        raise ValueError(f"{path}: not a checkpoint of this job (no 'config', 'words', 'model')")
    config, words = ckpt["config"], [str(w) for w in ckpt["words"]]
    model = build_model(config, len(words))
    model.load_state_dict(ckpt["model"])
    dictionary = ndl.data.Dictionary()
    for w in words:
        dictionary.add_word(w)
    return model, config, dictionary


# Defaults per sequence model. The Transformer's (2 layers of width 128, 4 heads of
# 32, MLP 512, dropout 0.1, context 64) has ~2.0M parameters against the LSTM's ~2.7M,
# most of both in the embedding and the output layer over the 6,000 words.
DEFAULTS = {
    "lstm": dict(embedding=128, hidden=256, layers=1, seq_len=35, lr=0.003, heads=None,
                 dropout=0.0),
    "transformer": dict(embedding=128, hidden=512, layers=2, seq_len=64, lr=0.003, heads=4,
                        dropout=0.1),
}
DEFAULTS["rnn"] = DEFAULTS["lstm"]


def build_model(config, vocab_size):
    extra = {}
    if config["seq_model"] == "transformer":
        extra = dict(num_head=config.get("heads"), dropout=config.get("dropout", 0.0))
    return LanguageModel(config["embedding"], vocab_size, config["hidden"],
                         num_layers=config["layers"], seq_model=config["seq_model"],
                         seq_len=config["seq_len"], **extra)


def plot(history, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["train"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, history["train"], "o-", label="train")
    ax.plot(epochs, history["test"], "o-", label="held out")
    ax.set(xlabel="epoch", ylabel="perplexity", title=title, yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-model", choices=["lstm", "rnn", "transformer"], default="lstm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    per_model = " (default: per --seq-model, see DEFAULTS)"
    ap.add_argument("--seq-len", type=int, default=None,
                    help="BPTT length; a Transformer's context" + per_model)
    ap.add_argument("--embedding", type=int, default=None, help="word vector size" + per_model)
    ap.add_argument("--hidden", type=int, default=None,
                    help="RNN/LSTM state; a Transformer's MLP width" + per_model)
    ap.add_argument("--layers", type=int, default=None, help=per_model.strip())
    ap.add_argument("--heads", type=int, default=None,
                    help="Transformer attention heads (of width embedding/heads)" + per_model)
    ap.add_argument("--dropout", type=float, default=None,
                    help="Transformer dropout" + per_model)
    ap.add_argument("--vocab", type=int, default=6000, help="words kept; the rest are <unk>")
    ap.add_argument("--lr", type=float, default=None, help="Adam's" + per_model)
    ap.add_argument("--clip", type=float, default=0.5, help="gradient norm clip (0: none)")
    ap.add_argument("--max-fortunes", type=int, default=None, help="use only the first N")
    ap.add_argument("--data-dir", default=FORTUNE_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-words", type=int, default=60)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--checkpoint", default=None,
                    help="default checkpoints/fortunes_<model>.safetensors")
    ap.add_argument("--plot", default=None, help="PNG of the curves; default beside the checkpoint")
    ap.add_argument("--evaluate", metavar="CHECKPOINT", help="only sample from a saved checkpoint")
    args = ap.parse_args(argv)
    for key, value in DEFAULTS[args.seq_model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    rng = np.random.default_rng(args.seed)
    if args.evaluate:
        model, config, dictionary = load_checkpoint(args.evaluate)
        print(sample(model, dictionary, args.sample_words, args.temperature, rng))
        return config
    ckpt = args.checkpoint or f"checkpoints/fortunes_{args.seq_model}.safetensors"
    png = args.plot if args.plot is not None else ckpt.rsplit(".", 1)[0] + ".png"

    np.random.seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        stats = prepare_corpus(args.data_dir, args.vocab, tmp, args.max_fortunes)
        corpus = ndl.data.Corpus(tmp)
    train = ndl.data.batchify(corpus.train, args.batch_size)
    test = ndl.data.batchify(corpus.test, args.batch_size)
    config = {"seq_model": args.seq_model, "embedding": args.embedding, "hidden": args.hidden,
              "layers": args.layers, "seq_len": args.seq_len}
    if args.seq_model == "transformer":
        config.update(heads=args.heads, dropout=args.dropout)
    model = build_model(config, len(corpus.dictionary))
    opt = ndl.optim.Adam(model.parameters(), lr=args.lr)
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    print(f"needle LanguageModel({args.seq_model}, embedding {args.embedding}, hidden "
          f"{args.hidden}, {args.layers} layer(s), {n_params:,} parameters) on fortunes: "
          f"{stats['fortunes']} fortunes, "
          f"{stats['train']:,} train / {stats['test']:,} held-out tokens, vocabulary "
          f"{len(corpus.dictionary)} of {stats['distinct words']:,} words")
    history = {"train": [], "test": []}
    start = time.perf_counter()
    for e in range(1, args.epochs + 1):
        tl = run_epoch(model, train, args.seq_len, opt, f"epoch {e}/{args.epochs}",
                       clip=args.clip or None)
        vl = run_epoch(model, test, args.seq_len, None, f"  test {e}/{args.epochs}")
        history["train"].append(math.exp(tl))
        history["test"].append(math.exp(vl))
        print(f"epoch {e}: train perplexity {math.exp(tl):.1f}, held-out perplexity "
              f"{math.exp(vl):.1f}")
    elapsed = time.perf_counter() - start
    save_checkpoint(ckpt, model, config, corpus.dictionary.idx2word)
    if png:
        plot(history, png, f"needle {args.seq_model} language model on fortunes")
    print(f"trained in {elapsed:.0f} s; checkpoint {ckpt}, curves {png}")
    print(f"sample (temperature {args.temperature}):")
    print(sample(model, corpus.dictionary, args.sample_words, args.temperature, rng))
    return {"history": history, "elapsed": elapsed, **stats}


if __name__ == "__main__":
    main()
