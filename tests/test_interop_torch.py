"""Weights from and to PyTorch (needle.interop, issue 12).

For every module of the layout table (Linear, Conv, BatchNorm1d/2d,
LayerNorm1d, Embedding, RNNCell, LSTMCell, RNN, LSTM) and a composed model:
- torch model -> needle (from_torch_state_dict): the same outputs on the
  same input, computed by torch and by needle;
- needle model -> torch (to_torch_state_dict, torch's own strict
  load_state_dict): the same outputs again;
- needle -> torch -> needle: bit-exact;
- errors in torch's names and shapes: missing, unexpected, mis-shaped keys.
"""
import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from needle.interop import Row, from_torch_state_dict, register_torch_layout, \
    to_torch_state_dict

tnn = torch.nn
TOL = dict(rtol=2e-5, atol=2e-5)


def T(x):
    return ndl.Tensor(x, requires_grad=False)


def rnn_inputs(L=1, H=5, cell=False, lstm=False):
    def make():
        x = np.random.randn(*((3, 4) if cell else (6, 3, 4))).astype(np.float32)
        h = np.random.randn(*((3, H) if cell else (L, 3, H))).astype(np.float32)
        c = np.random.randn(*h.shape).astype(np.float32)
        return (x, h, c) if lstm else (x, h)
    return make


def flat(out):
    """Every array of a nested tuple of outputs, in order."""
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in flat(o)]
    return [out.detach().numpy() if isinstance(out, torch.Tensor) else out.numpy()]


def run_torch(tm, args):
    t = [torch.from_numpy(a) for a in args]
    if isinstance(tm, tnn.Embedding):
        t = [t[0].long()]
    if isinstance(tm, (tnn.LSTM, tnn.LSTMCell)):
        t = [t[0], (t[1], t[2])]
    with torch.no_grad():
        return flat(tm(*t))


def run_needle(m, args):
    t = [T(a) for a in args]
    if isinstance(m, (nn.LSTM, nn.LSTMCell)):
        t = [t[0], (t[1], t[2])]
    return flat(m(*t))


def composed_needle():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3, bias=False))


def composed_torch():
    return tnn.Sequential(tnn.Linear(4, 8), tnn.ReLU(), tnn.BatchNorm1d(8),
                          tnn.Linear(8, 3, bias=False))


# name: (needle module, torch module, inputs)
CASES = {
    "linear": (lambda: nn.Linear(4, 3), lambda: tnn.Linear(4, 3),
               lambda: (np.random.randn(5, 4).astype(np.float32),)),
    "linear_nobias": (lambda: nn.Linear(4, 3, bias=False), lambda: tnn.Linear(4, 3, bias=False),
                      lambda: (np.random.randn(5, 4).astype(np.float32),)),
    "conv3": (lambda: nn.Conv(3, 5, 3), lambda: tnn.Conv2d(3, 5, 3, padding=1),
              lambda: (np.random.randn(2, 3, 7, 7).astype(np.float32),)),
    "conv5_stride2_nobias": (lambda: nn.Conv(2, 4, 5, stride=2, bias=False),
                             lambda: tnn.Conv2d(2, 4, 5, stride=2, padding=2, bias=False),
                             lambda: (np.random.randn(2, 2, 9, 9).astype(np.float32),)),
    "batchnorm1d": (lambda: nn.BatchNorm1d(6), lambda: tnn.BatchNorm1d(6),
                    lambda: (np.random.randn(5, 6).astype(np.float32),)),
    "batchnorm2d": (lambda: nn.BatchNorm2d(3), lambda: tnn.BatchNorm2d(3),
                    lambda: (np.random.randn(2, 3, 4, 4).astype(np.float32),)),
    "layernorm": (lambda: nn.LayerNorm1d(6), lambda: tnn.LayerNorm(6),
                  lambda: (np.random.randn(5, 6).astype(np.float32),)),
    "embedding": (lambda: nn.Embedding(10, 4), lambda: tnn.Embedding(10, 4),
                  lambda: (np.random.randint(0, 10, (5, 3)).astype(np.float32),)),
    "rnncell_relu": (lambda: nn.RNNCell(4, 5, nonlinearity="relu"),
                     lambda: tnn.RNNCell(4, 5, nonlinearity="relu"), rnn_inputs(cell=True)),
    "lstmcell": (lambda: nn.LSTMCell(4, 5), lambda: tnn.LSTMCell(4, 5),
                 rnn_inputs(cell=True, lstm=True)),
    "rnn2_tanh": (lambda: nn.RNN(4, 5, num_layers=2), lambda: tnn.RNN(4, 5, num_layers=2),
                  rnn_inputs(L=2)),
    "rnn_nobias": (lambda: nn.RNN(4, 5, bias=False), lambda: tnn.RNN(4, 5, bias=False),
                   rnn_inputs()),
    "lstm2": (lambda: nn.LSTM(4, 5, num_layers=2), lambda: tnn.LSTM(4, 5, num_layers=2),
              rnn_inputs(L=2, lstm=True)),
    "composed": (composed_needle, composed_torch,
                 lambda: (np.random.randn(5, 4).astype(np.float32),)),
}


def randomize_torch(tm):
    """Weights and running statistics away from their initial values."""
    with torch.no_grad():
        for name, t in tm.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name
                        else torch.randn_like(t) * 0.5)
    return tm.eval()


def randomize_needle(m):
    for name, t in m.state_dict().items():
        arr = np.random.rand(*t.shape) + 0.5 if "running_var" in name \
            else np.random.randn(*t.shape) * 0.5
        m.load_state_dict({name: arr}, strict=False)
    return m.eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_to_needle_same_outputs(case):
    make_needle, make_torch, inputs = CASES[case]
    torch.manual_seed(0)
    tm = randomize_torch(make_torch())
    m = make_needle().eval()
    res = from_torch_state_dict(m, tm.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == []
    args = inputs()
    for a, b in zip(run_needle(m, args), run_torch(tm, args), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("case", sorted(CASES))
def test_needle_to_torch_same_outputs_and_back_bit_exact(case):
    make_needle, make_torch, inputs = CASES[case]
    m = randomize_needle(make_needle())
    sd = to_torch_state_dict(m)
    tm = make_torch().eval()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})  # torch's strict load
    assert list(sd) == list(tm.state_dict())  # every torch key, in torch's order
    args = inputs()
    for a, b in zip(run_needle(m, args), run_torch(tm, args), strict=True):
        np.testing.assert_allclose(a, b, **TOL)
    back = make_needle()
    from_torch_state_dict(back, tm.state_dict())
    for (k, v), (k2, v2) in zip(m.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and v.numpy().tobytes() == v2.numpy().tobytes()


def test_layouts_in_the_table():
    m = nn.Linear(3, 2)
    sd = to_torch_state_dict(m)
    np.testing.assert_array_equal(sd["weight"], m.weight.numpy().T)
    assert sd["bias"].shape == (2,) and sd["weight"].flags.c_contiguous
    conv = nn.Conv(2, 3, 3)
    w = to_torch_state_dict(conv)["weight"]
    assert w.shape == (3, 2, 3, 3)
    np.testing.assert_array_equal(w[2, 1, 0, 2], conv.weight.numpy()[0, 2, 1, 2])
    lstm = to_torch_state_dict(nn.LSTM(4, 5, num_layers=2))
    assert list(lstm) == [f"{w}_l{i}" for i in range(2)
                          for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert lstm["weight_ih_l1"].shape == (20, 5)
    bn = to_torch_state_dict(nn.BatchNorm1d(3))
    assert bn["num_batches_tracked"].dtype == np.int64 and bn["num_batches_tracked"].shape == ()
    assert bn["num_batches_tracked"] == 0


def test_modules_outside_the_table_keep_names():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(ndl.init.ones(3))
            self.register_buffer("offset", ndl.init.zeros(3))
            self.proj = nn.Linear(3, 2)

    m = Scale()
    sd = to_torch_state_dict(m)
    assert list(sd) == ["gain", "offset", "proj.weight", "proj.bias"]
    sd["gain"] = sd["gain"] * 2
    from_torch_state_dict(m, sd)
    np.testing.assert_array_equal(m.gain.numpy(), 2 * np.ones(3, np.float32))


def test_register_torch_layout():
    class Affine(nn.Module):  # stores its matrix transposed, like Linear
        def __init__(self):
            super().__init__()
            self.A = nn.Parameter(ndl.init.rand(2, 3))

    register_torch_layout(Affine, lambda m: [Row("A", "weight", lambda a: a.T, lambda a: a.T)])
    m = Affine()
    sd = to_torch_state_dict(m)
    assert list(sd) == ["weight"] and sd["weight"].shape == (3, 2)
    w = np.random.randn(3, 2).astype(np.float32)
    from_torch_state_dict(m, {"weight": w})
    np.testing.assert_array_equal(m.A.numpy(), w.T)


def test_errors_name_torch_keys_and_shapes():
    tm = composed_torch()
    m = composed_needle()
    sd = dict(tm.state_dict())
    del sd["3.weight"]
    sd["9.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as info:
        from_torch_state_dict(m, sd)
    msg = str(info.value)
    assert 'Missing key(s) in state_dict: "3.weight"' in msg
    assert 'Unexpected key(s) in state_dict: "9.weight"' in msg
    res = from_torch_state_dict(m, sd, strict=False)
    assert res.missing_keys == ["3.weight"] and res.unexpected_keys == ["9.weight"]
    sd = dict(tm.state_dict())
    sd["0.weight"] = torch.zeros(4, 8)  # needle's layout given where torch's is expected
    with pytest.raises(RuntimeError, match=r"size mismatch for 0.weight: copying a param with "
                       r"shape \(4, 8\) from checkpoint, the shape in current model is \(8, 4\)"):
        from_torch_state_dict(m, sd)


def test_torch_file_through_needle_load(tmp_path):
    """A torch model saved with safetensors, loaded by needle.load, converted."""
    from safetensors.torch import save_file
    torch.manual_seed(1)
    tm = randomize_torch(composed_torch())
    path = str(tmp_path / "torch.safetensors")
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, path)
    m = composed_needle().eval()
    from_torch_state_dict(m, ndl.load(path))
    x = np.random.randn(4, 4).astype(np.float32)
    np.testing.assert_allclose(run_needle(m, (x,))[0], run_torch(tm, (x,))[0], **TOL)


def test_requires_grad_torch_tensors_are_accepted():
    tm = tnn.Linear(3, 2)  # parameters with requires_grad=True
    m = nn.Linear(3, 2)
    from_torch_state_dict(m, dict(tm.named_parameters()))
    np.testing.assert_array_equal(m.weight.numpy(), tm.weight.detach().numpy().T)


HAS_TRANSFORMER = hasattr(nn, "TransformerLayer")


def torch_layer(F, H, hidden):
    return tnn.TransformerEncoderLayer(F, H, hidden, dropout=0.0, batch_first=True,
                                       norm_first=True).eval()


@pytest.mark.skipif(not HAS_TRANSFORMER, reason="needle.nn.TransformerLayer (issue 9) absent")
def test_transformer_layer_both_ways():
    F, H, D, hidden, B, T = 16, 4, 4, 32, 2, 5
    torch.manual_seed(0)
    tl = torch_layer(F, H, hidden)
    with torch.no_grad():  # needle's attention has no biases: torch's must be zero
        tl.self_attn.in_proj_bias.zero_()
        tl.self_attn.out_proj.bias.zero_()
        for norm in (tl.norm1, tl.norm2):
            norm.weight.normal_()
            norm.bias.normal_()
    mask = tnn.Transformer.generate_square_subsequent_mask(T)
    x = np.random.randn(B, T, F).astype(np.float32)

    def torch_out(layer):
        with torch.no_grad():
            return layer(torch.from_numpy(x), src_mask=mask, is_causal=True).numpy()

    m = nn.TransformerLayer(F, H, D, hidden, dropout=0.0, causal=True)
    from_torch_state_dict(m, tl.state_dict())
    np.testing.assert_allclose(m(T_(x)).numpy(), torch_out(tl), **TOL)

    m2 = nn.TransformerLayer(F, H, D, hidden, dropout=0.0, causal=True)
    sd = to_torch_state_dict(m2)
    assert list(sd) == list(tl.state_dict())
    tl2 = torch_layer(F, H, hidden)
    tl2.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    np.testing.assert_allclose(m2(T_(x)).numpy(), torch_out(tl2), **TOL)

    # lossy conversions are refused
    m2.attention.prenorm_k.weight.data = m2.attention.prenorm_k.weight.data * 2
    with pytest.raises(ValueError, match="prenorm_q/k/v.weight"):
        to_torch_state_dict(m2)
    sd = dict(tl.state_dict())
    sd["self_attn.in_proj_bias"] = torch.ones(3 * F)
    with pytest.raises(ValueError, match="in_proj_bias is not zero"):
        from_torch_state_dict(m, sd)
    names = list(to_torch_state_dict(nn.Transformer(F, hidden, 2, num_head=H, dim_head=D)))
    assert names[0] == "positional_embedding.weight"
    assert names[1] == "layers.0.self_attn.in_proj_weight" and names[-1] == "layers.1.norm2.bias"


def T_(x):
    return ndl.Tensor(x, requires_grad=False)
