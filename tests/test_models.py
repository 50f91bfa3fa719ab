"""apps/models.py (API.md 9.3) and the real-data runs of the main job (the
convolutional Fashion-MNIST run and the fortunes language model), end to end
on small data written here."""
import os
import sys

import numpy as np
import pytest

import needle as ndl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]
import models  # noqa: E402
import train_fashion_mnist as job  # noqa: E402
import train_lm  # noqa: E402

from test_apps import toy_mnist  # noqa: E402

ASAN = bool(os.environ.get("NEEDLE_ASAN_RUN"))


def n_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def test_resnet9_shape_parameters_and_gradients():
    np.random.seed(0)
    model = models.ResNet9()
    assert n_params(model) == 431946
    x = ndl.Tensor(np.random.rand(2, 3, 32, 32).astype("float32"), requires_grad=False)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet9_float64():
    model = models.ResNet9(dtype="float64")
    out = model(ndl.Tensor(np.random.rand(1, 3, 32, 32), dtype="float64", requires_grad=False))
    assert out.dtype == "float64" and out.shape == (1, 10)


@pytest.mark.parametrize("seq_model", ["rnn", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_language_model(seq_model, layers):
    np.random.seed(0)
    model = models.LanguageModel(8, 30, 12, num_layers=layers, seq_model=seq_model)
    x = ndl.Tensor(np.random.randint(0, 30, (5, 3)).astype("float32"), requires_grad=False)
    out, h = model(x)
    assert out.shape == (15, 30)
    if seq_model == "lstm":
        assert isinstance(h, tuple) and h[0].shape == (layers, 3, 12) and h[1].shape == h[0].shape
    else:
        assert h.shape == (layers, 3, 12)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    out2, _ = model(x, h)  # the state feeds the next call
    assert out2.shape == (15, 30)


def test_language_model_bad_seq_model():
    with pytest.raises(ValueError, match="seq_model"):
        models.LanguageModel(8, 30, 12, seq_model="gru")


def test_fashion_cnn_job_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    toy_mnist(str(data))
    ckpt = str(tmp_path / "c.npz")
    acc = job.main(["--model", "cnn", "--channels", "4,8,8,8", "--data-dir", str(data),
                    "--epochs", "2", "--batch-size", "50", "--checkpoint", ckpt,
                    "--plot", "" if ASAN else str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert "FashionResNet" in out and "final test accuracy" in out
    assert acc > 0.5, out
    again = job.main(["--data-dir", str(data), "--evaluate", ckpt])
    assert again == pytest.approx(acc)


def write_fortunes(d):
    os.makedirs(d)
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    for name in ("wisdom", "humor"):
        with open(os.path.join(d, name), "w") as f:
            f.write("\n%\n".join(" ".join(rng.choice(words, 12)) + "." for _ in range(60)))
        with open(os.path.join(d, name + ".dat"), "wb") as f:
            f.write(b"\x00\x01binary index")


def test_lm_job_end_to_end(tmp_path, capsys):
    d = str(tmp_path / "fortunes")
    write_fortunes(d)
    ckpt = str(tmp_path / "lm.npz")
    res = train_lm.main(["--data-dir", d, "--epochs", "2", "--hidden", "16", "--embedding", "8",
                         "--batch-size", "4", "--seq-len", "8", "--checkpoint", ckpt,
                         "--plot", "" if ASAN else str(tmp_path / "lm.png"),
                         "--sample-words", "12"])
    out = capsys.readouterr().out
    assert "epoch 2: train perplexity" in out and "held-out perplexity" in out
    hist = res["history"]
    assert hist["train"][1] < hist["train"][0]  # learning
    assert hist["train"][1] < 11  # 10 words + <eos> + '.': uniform would be ~12
    assert res["fortunes"] == 120 and res["test"] > 0
    sample = out.split("sample (temperature")[1]
    assert any(w in sample for w in ("cat", "dog", "mat"))
    train_lm.main(["--evaluate", ckpt, "--sample-words", "5"])
    assert len(capsys.readouterr().out.split()) >= 1


def test_lm_job_missing_data_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        train_lm.main(["--data-dir", str(tmp_path / "none")])
    assert "fortunes" in str(e.value) and "\n" not in str(e.value)


def test_simple_ml_cifar_and_ptb_helpers(tmp_path):
    """The course's training helpers (API.md 9.2) on tiny data: they train (the
    loss falls) and evaluation is deterministic."""
    import simple_ml

    np.random.seed(0)
    X = np.random.rand(16, 3, 32, 32).astype("float32")
    y = np.arange(16) % 2
    loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(X, y), 8)
    model = models.ResNet9()
    acc1, loss1 = simple_ml.train_cifar10(model, loader, n_epochs=1, lr=0.01)
    acc2, loss2 = simple_ml.train_cifar10(model, loader, n_epochs=3, lr=0.01)
    assert 0.0 <= acc1 <= 1.0 and loss2 < loss1
    assert simple_ml.evaluate_cifar10(model, loader) == simple_ml.evaluate_cifar10(model, loader)

    ids = np.tile(np.arange(6), 40)  # a text that repeats: easy to learn
    data = ndl.data.batchify(ids, 4)
    lm = models.LanguageModel(8, 6, 16, seq_model="lstm")
    _, l1 = simple_ml.train_ptb(lm, data, seq_len=5, n_epochs=1, optimizer=ndl.optim.Adam,
                                lr=0.05)
    acc, l2 = simple_ml.train_ptb(lm, data, seq_len=5, n_epochs=4, optimizer=ndl.optim.Adam,
                                  lr=0.05)
    assert l2 < l1 and acc > 0.5
    ev = simple_ml.evaluate_ptb(lm, data, seq_len=5)
    assert ev == simple_ml.evaluate_ptb(lm, data, seq_len=5)
