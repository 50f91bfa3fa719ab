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


# ---- the models on cuda: the same steps as on the cpu (issue 10) ---------------
from conftest import CUDA_WHY  # noqa: E402


def _train_steps(make, x, y, device, steps=3):
    """`steps` SGD steps of make(device) from the weights seed 0 draws (the same on
    every device: init draws on the host), on batch (x, y); the losses and the final
    parameters as NumPy."""
    np.random.seed(0)
    model = make(device)
    opt = ndl.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    X = ndl.Tensor(x, device=device, requires_grad=False)
    Y = ndl.Tensor(y, device=device, requires_grad=False)
    losses = []
    for _ in range(steps):
        out = model(X)
        loss = ndl.nn.SoftmaxLoss()(out[0] if isinstance(out, tuple) else out, Y)
        opt.reset_grad()
        loss.backward(create_graph=False)  # as the apps train: the fused backward slots
        opt.step()
        losses.append(float(loss.numpy()))
    assert all(p.device == device for p in model.parameters())
    return losses, [p.numpy() for p in model.parameters()]


_rng = np.random.default_rng(10)
MODELS = {
    "mlp": (lambda d: ndl.nn.Sequential(ndl.nn.Linear(784, 64, device=d), ndl.nn.ReLU(),
                                        ndl.nn.Dropout(0.2), ndl.nn.Linear(64, 10, device=d)),
            _rng.standard_normal((16, 784)).astype("float32"), _rng.integers(0, 10, 16)),
    "resnet9": (lambda d: models.ResNet9(device=d),
                _rng.random((8, 3, 32, 32)).astype("float32"), _rng.integers(0, 10, 8)),
    "lstm_lm": (lambda d: models.LanguageModel(16, 50, 24, 2, "lstm", 6, device=d),
                _rng.integers(0, 50, (6, 3)).astype("float32"), _rng.integers(0, 50, 18)),
    "transformer_lm": (lambda d: models.LanguageModel(16, 50, 32, 2, "transformer", 6, device=d,
                                                      num_head=2, dropout=0.1),
                       _rng.integers(0, 50, (6, 3)).astype("float32"),
                       _rng.integers(0, 50, 18)),
}


@pytest.mark.skipif(CUDA_WHY is not None, reason=f"no GPU: {CUDA_WHY}")
@pytest.mark.parametrize("name", list(MODELS))
def test_models_train_on_cuda_as_on_cpu(name):
    """Three SGD steps of each model on cuda against the same steps on the cpu (the
    cpu's numbers are checked against torch op by op elsewhere): float32 rounding
    apart, the same losses and weights. Dropout draws its masks from the same
    seeded generator on both devices."""
    make, x, y = MODELS[name]
    cpu_losses, cpu_params = _train_steps(make, x, y, ndl.cpu())
    gpu_losses, gpu_params = _train_steps(make, x, y, ndl.cuda())
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4, atol=1e-5)
    for a, b in zip(gpu_params, cpu_params):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
