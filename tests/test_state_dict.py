"""Module.state_dict / load_state_dict, buffers, and optimizer state dicts (issue 12).

- Names: a needle model and the torch model of the same structure have the
  same state-dict keys (torch's num_batches_tracked aside), in the same order.
- Buffers: BatchNorm's running statistics are buffers (state_dict, named_buffers)
  and stay plain Tensors outside parameters() (API.md 6.1).
- load_state_dict copies in place, bit-exact, casts to the parameter's dtype,
  and raises PyTorch's messages (compared with torch's own) for missing,
  unexpected and mis-shaped keys; strict=False returns what torch returns.
- Optimizers: SGD (momentum, weight decay) and Adam resume through a file
  (needle.save / needle.load) with the same losses, bit for bit, as an
  uninterrupted run.
"""
import ast
import copy
import re

import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from conftest import train_steps


def needle_mlp(seed=0, device=None):
    np.random.seed(seed)
    return nn.Sequential(nn.Linear(6, 8, device=device), nn.BatchNorm1d(8, device=device),
                         nn.ReLU(),
                         nn.Residual(nn.Sequential(nn.Linear(8, 8, device=device), nn.ReLU())),
                         nn.Linear(8, 3, device=device))


def torch_mlp():
    tn = torch.nn
    return tn.Sequential(tn.Linear(6, 8), tn.BatchNorm1d(8), tn.ReLU(),
                         tn.Sequential(tn.Sequential(tn.Linear(8, 8), tn.ReLU())), tn.Linear(8, 3))


def test_names_follow_torch():
    m = needle_mlp()
    keys = [k.replace(".fn.", ".0.") for k in m.state_dict()]
    torch_keys = [k for k in torch_mlp().state_dict() if not k.endswith("num_batches_tracked")]
    assert keys == torch_keys
    assert [n for n, _ in m.named_parameters()] == [
        "0.weight", "0.bias", "1.weight", "1.bias", "3.fn.0.weight", "3.fn.0.bias",
        "4.weight", "4.bias"]
    assert [p for _, p in m.named_parameters()] == m.parameters()
    assert [n for n, _ in m.named_modules()][:4] == ["", "0", "1", "2"]


def test_named_parameters_lists_dicts_and_cells():
    lstm = nn.LSTM(3, 4, num_layers=2)
    names = [n for n, _ in lstm.named_parameters()]
    assert names[:4] == ["lstm_cells.0.W_ih", "lstm_cells.0.W_hh", "lstm_cells.0.bias_ih",
                         "lstm_cells.0.bias_hh"]
    assert len(names) == len(lstm.parameters()) == 8

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = {"a": nn.Linear(2, 2), "b": [nn.Parameter(ndl.init.ones(3))]}

    assert [n for n, _ in Holder().named_parameters()] == ["table.a.weight", "table.a.bias",
                                                          "table.b.0"]


def test_batchnorm_statistics_are_buffers_not_parameters(device):
    bn = nn.BatchNorm1d(5, device=device)
    assert len(bn.parameters()) == 2
    assert not isinstance(bn.running_mean, nn.Parameter)
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var"]
    bn(ndl.Tensor(np.random.randn(7, 5).astype(np.float32), device=device))  # new tensors
    sd = bn.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var"]
    assert all(v.device == device for v in sd.values())
    np.testing.assert_array_equal(sd["running_mean"].numpy(), bn.running_mean.numpy())
    assert not sd["running_mean"].requires_grad and sd["running_mean"].op is None
    bn2 = nn.BatchNorm2d(3)
    assert [n for n, _ in bn2.named_buffers()] == ["running_mean", "running_var"]


def test_register_buffer():
    m = nn.Module()
    m.register_buffer("scale", ndl.init.ones(2))
    m.register_buffer("scratch", ndl.init.zeros(2), persistent=False)
    m.register_buffer("empty", None)
    assert list(m.state_dict()) == ["scale"]
    assert [n for n, _ in m.named_buffers()] == ["scale", "scratch"]
    assert m.parameters() == []
    with pytest.raises(KeyError, match="'a.b'"):
        m.register_buffer("a.b", ndl.init.ones(1))
    with pytest.raises(TypeError, match="ndarray"):
        m.register_buffer("x", np.ones(2))


def test_load_state_dict_round_trip_bit_exact_and_in_place(device):
    a, b = needle_mlp(0, device), needle_mlp(1, device)
    a.train()
    a(ndl.Tensor(np.random.randn(10, 6).astype(np.float32), device=device))  # running stats
    params_before = b.parameters()
    result = b.load_state_dict(a.state_dict())
    assert result == ([], []) and result.missing_keys == []
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and va.numpy().tobytes() == vb.numpy().tobytes()
        assert vb.device == device
    assert all(p is q for p, q in zip(params_before, b.parameters()))  # optimizers keep them
    x = ndl.Tensor(np.random.randn(4, 6).astype(np.float32), device=device)
    a.eval(), b.eval()
    assert a(x).numpy().tobytes() == b(x).numpy().tobytes()


def test_load_copies_and_casts(device):
    lin = nn.Linear(3, 2, device=device)
    w = np.random.randn(3, 2)  # float64 into a float32 parameter: cast, as torch's copy_
    lin.load_state_dict({"weight": w, "bias": np.zeros((1, 2), np.float32)})
    assert lin.weight.dtype == "float32" and lin.weight.device == device
    np.testing.assert_array_equal(lin.weight.numpy(), w.astype(np.float32))
    w[0, 0] = 100.0  # a copy: the module does not alias the given array
    assert lin.weight.numpy()[0, 0] != 100.0
    src = nn.Linear(3, 2, device=device)
    lin.load_state_dict(src.state_dict())
    src.weight.data = src.weight.data * 2  # nor the source module
    assert not np.array_equal(lin.weight.numpy(), src.weight.numpy())


def torch_message(model, sd, strict=True):
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(sd, strict=strict)
    return str(info.value)


def test_error_messages_match_torch():
    nm = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    tm = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))

    def dicts():
        tsd = dict(tm.state_dict())
        del tsd["1.num_batches_tracked"]  # torch fills it in when it is missing
        return {k: v.numpy() for k, v in nm.state_dict().items()}, tsd

    nsd, tsd = dicts()
    # missing and unexpected keys
    del nsd["1.bias"], tsd["1.bias"]
    nsd["extra.weight"], tsd["extra.weight"] = np.zeros(1), torch.zeros(1)
    n_msg = torch_message(nm, nsd)
    assert n_msg == torch_message(tm, tsd)
    assert 'Missing key(s) in state_dict: "1.bias"' in n_msg
    # strict=False: the same lists as torch's
    res, tres = nm.load_state_dict(nsd, strict=False), tm.load_state_dict(tsd, strict=False)
    assert (res.missing_keys, res.unexpected_keys) == (tres.missing_keys, tres.unexpected_keys)
    # a mis-shaped key: torch's message with plain tuples for torch.Size
    nsd, tsd = dicts()
    nsd["1.weight"], tsd["1.weight"] = np.zeros((5, 5)), torch.zeros(5, 5)
    t_msg = torch_message(tm, tsd, strict=False)
    n_msg = torch_message(nm, nsd, strict=False)  # a shape mismatch is an error even so
    t_msg = re.sub(r"torch\.Size\((\[[^\]]*\])\)",
                   lambda m: str(tuple(ast.literal_eval(m.group(1)))), t_msg)
    assert n_msg == t_msg
    assert "size mismatch for 1.weight" in n_msg and "(5, 5)" in n_msg and "(3,)" in n_msg


def test_load_state_dict_rejects_non_mapping():
    with pytest.raises(TypeError, match="mapping"):
        nn.Linear(2, 2).load_state_dict([("weight", np.zeros((2, 2)))])


# ---- optimizers --------------------------------------------------------------

def batches(n):
    rng = np.random.default_rng(7)
    return [(rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16))
            for _ in range(n)]


OPTIMIZERS = {
    "sgd": lambda ps: ndl.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda ps: ndl.optim.Adam(ps, lr=0.01, weight_decay=1e-3),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_resume_is_exact(name, tmp_path, device):
    """On any device: its kernels are deterministic, so the resumed run is bit for bit."""
    data = batches(8)
    model = needle_mlp(0, device)
    full = train_steps(model, OPTIMIZERS[name](model.parameters()), data, device)

    model = needle_mlp(0, device)
    opt = OPTIMIZERS[name](model.parameters())
    first = train_steps(model, opt, data[:3], device)
    path = tmp_path / "ckpt.safetensors"
    ndl.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3}, path)
    del model, opt

    resumed = needle_mlp(5, device)  # other weights: the checkpoint brings everything back
    opt = OPTIMIZERS[name](resumed.parameters())
    opt.lr = 123.0  # hyperparameters come back from the checkpoint too
    ckpt = ndl.load(path)
    resumed.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    assert ckpt["step"] == 3
    rest = train_steps(resumed, opt, data[3:], device)
    assert first + rest == full


def test_optimizer_state_dict_layout_and_copies(device):
    model = needle_mlp(0, device)
    opt = ndl.optim.Adam(model.parameters(), lr=0.01)
    train_steps(model, opt, batches(2), device)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}  # torch.optim's layout
    group = sd["param_groups"][0]
    assert group["params"] == list(range(len(model.parameters()))) and group["t"] == 2
    assert set(sd["state"][0]) == {"m", "v"}
    assert sd["state"][0]["m"].device == device
    m0 = sd["state"][0]["m"].numpy().copy()
    train_steps(model, opt, batches(1), device)  # the fused update writes states in place
    np.testing.assert_array_equal(sd["state"][0]["m"].numpy(), m0)  # the dict was a copy
    opt2 = ndl.optim.Adam(model.parameters())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.t == 3 and opt2.lr == 0.01


def test_optimizer_load_errors():
    model = needle_mlp(0)
    opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, opt, batches(1))
    sd = opt.state_dict()
    small = ndl.optim.SGD(nn.Linear(2, 2).parameters(), momentum=0.9)
    with pytest.raises(ValueError, match="doesn't match the size"):
        small.load_state_dict(sd)
    bad = copy.deepcopy(sd)
    bad["state"][0]["u"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*shape \(6, 8\)"):
        ndl.optim.SGD(model.parameters()).load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["state"][0] = {"m": bad["state"][0]["u"]}
    with pytest.raises(ValueError, match="unexpected optimizer state 'm'"):
        ndl.optim.SGD(model.parameters()).load_state_dict(bad)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})
