"""needle.save / needle.load (safetensors) and pickling (issue 12).

- A file written by needle and read back is bit-exact (NaN payloads, -0.0,
  subnormals, float32 and float64), keeps the nesting and the kinds (Tensor,
  NDArray, NumPy array, plain values), and is a standard safetensors file
  (the safetensors package and torch read it with the state dict's names).
- A foreign safetensors file loads as a dict of NumPy arrays.
- Bad files, each one clear ValueError naming the file: truncated at several
  points, wrong header length, wrong dtype string, shapes that do not match the
  data, offsets out of range, files that are not safetensors (npz, pickle,
  random bytes), and needle metadata that does not match the tensors.
  A pickle with a payload is never executed.
- pickle and copy.deepcopy of Tensor, Parameter, NDArray (views come back
  compact), whole Modules and optimizers, and a model sent to another process.
"""
import copy
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import needle as ndl
import needle.nn as nn
from needle.backend_ndarray import NDArray
from conftest import train_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def special(dtype):
    """Values whose bits a lossy round trip would change."""
    info = np.finfo(dtype)
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, info.tiny / 4, info.max, -info.eps,
                  1 / 3], dtype=dtype)
    bits = x.view(np.uint32 if dtype == np.float32 else np.uint64)
    bits[4] |= 0x5  # a NaN with a payload
    return np.concatenate([x, np.random.randn(23).astype(dtype)]).reshape(4, 8)


def same_bits(a, b):
    a = a.numpy() if hasattr(a, "numpy") else a
    b = b.numpy() if hasattr(b, "numpy") else b
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact(tmp_path, dtype, device):
    """From any device (a cuda array is copied to the host first); files load on the cpu."""
    path = tmp_path / "t.safetensors"
    x = special(dtype)
    name = np.dtype(dtype).name
    obj = {"t": ndl.Tensor(x, dtype=name, requires_grad=True, device=device),
           "nd": NDArray(x, dtype=name, device=device).permute((1, 0)),
           "np_int": np.arange(5, dtype=np.int64),
           "scalar": ndl.Tensor(np.array(2.5, dtype), dtype=name, device=device)}
    ndl.save(obj, path)
    back = ndl.load(path)
    assert set(back) == set(obj)
    assert isinstance(back["t"], ndl.Tensor) and back["t"].requires_grad
    assert back["t"].dtype == np.dtype(dtype).name and same_bits(back["t"], x)
    assert isinstance(back["nd"], NDArray) and same_bits(back["nd"], x.T.copy())
    assert back["nd"].is_compact()
    assert same_bits(back["np_int"], obj["np_int"]) and isinstance(back["np_int"], np.ndarray)
    assert back["scalar"].shape == () and same_bits(back["scalar"], np.array(2.5, dtype))
    assert back["t"].device == ndl.cpu() and back["nd"].device == ndl.cpu()


def test_nested_checkpoint_round_trip(tmp_path, device):
    model = nn.Sequential(nn.Linear(3, 4, device=device), nn.BatchNorm1d(4, device=device))
    opt = ndl.optim.Adam(model.parameters(), lr=0.01)
    loss = model(ndl.Tensor(np.random.randn(5, 3).astype(np.float32), device=device)).sum()
    loss.backward()
    opt.step()
    obj = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
           "config": {"hidden": [4, 8], "name": "mlp", "lr": 0.1, "drop": None, "t": (1, 2)},
           "history": [0.5, float("inf")]}
    path = str(tmp_path / "ckpt.safetensors")
    ndl.save(obj, path)
    back = ndl.load(path)
    assert back["epoch"] == 3 and back["config"] == obj["config"]
    assert back["history"] == obj["history"]
    assert list(back["model"]) == list(obj["model"])
    for k, v in obj["model"].items():
        assert same_bits(back["model"][k], v)
    assert back["optimizer"]["param_groups"] == obj["optimizer"]["param_groups"]
    assert set(back["optimizer"]["state"]) == set(range(4))  # int keys stay ints
    for i, st in obj["optimizer"]["state"].items():
        assert all(same_bits(back["optimizer"]["state"][i][n], st[n]) for n in ("m", "v"))


def _mlp(device, seed):
    np.random.seed(seed)
    return nn.Sequential(nn.Linear(3, 6, device=device), nn.BatchNorm1d(6, device=device),
                         nn.ReLU(), nn.Linear(6, 2, device=device))


def test_checkpoint_moves_between_devices(tmp_path, device):
    """A model and its optimizer trained on `device`, saved, resume on the cpu, are
    saved again and come back to `device`: every tensor bit for bit, each on the device
    of the module that loaded it, and the cpu copy computes what the original does."""
    rng = np.random.default_rng(3)
    data = [(rng.standard_normal((8, 3)).astype(np.float32), rng.integers(0, 2, 8))
            for _ in range(2)]
    model = _mlp(device, 0)
    opt = ndl.optim.Adam(model.parameters(), lr=0.01)
    train_steps(model, opt, data, device)
    first = tmp_path / "from_device.safetensors"
    ndl.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, first)

    cpu_model = _mlp(ndl.cpu(), 1)  # other weights: all of them must come from the file
    cpu_opt = ndl.optim.Adam(cpu_model.parameters(), lr=1.0)
    ckpt = ndl.load(first)
    cpu_model.load_state_dict(ckpt["model"])
    cpu_opt.load_state_dict(ckpt["optimizer"])
    for k, v in model.state_dict().items():
        w = cpu_model.state_dict()[k]
        assert w.device == ndl.cpu() and same_bits(w, v), k
    for p, q in zip(opt.params, cpu_opt.params):
        assert cpu_opt.m[q].device == ndl.cpu() and same_bits(cpu_opt.m[q], opt.m[p])
        assert same_bits(cpu_opt.v[q], opt.v[p])
    assert cpu_opt.t == opt.t and cpu_opt.lr == 0.01
    x = np.random.randn(5, 3).astype(np.float32)
    model.eval(), cpu_model.eval()
    np.testing.assert_allclose(cpu_model(ndl.Tensor(x)).numpy(),
                               model(ndl.Tensor(x, device=device)).numpy(),
                               rtol=1e-5, atol=1e-6)

    second = tmp_path / "from_cpu.safetensors"
    ndl.save({"model": cpu_model.state_dict(), "optimizer": cpu_opt.state_dict()}, second)
    back = _mlp(device, 2)
    back_opt = ndl.optim.Adam(back.parameters())
    ckpt = ndl.load(second)
    back.load_state_dict(ckpt["model"])
    back_opt.load_state_dict(ckpt["optimizer"])
    for k, v in model.state_dict().items():
        w = back.state_dict()[k]
        assert w.device == device and same_bits(w, v), k
    for p, q in zip(opt.params, back_opt.params):
        assert back_opt.v[q].device == device and same_bits(back_opt.v[q], opt.v[p])
    # and the state dicts themselves, without a file, between the two devices
    direct = _mlp(device, 4)
    direct.load_state_dict(cpu_model.state_dict())
    cpu_model.load_state_dict(back.state_dict())
    for k, v in model.state_dict().items():
        assert direct.state_dict()[k].device == device and same_bits(direct.state_dict()[k], v)
        assert same_bits(cpu_model.state_dict()[k], v)


def test_file_is_standard_safetensors(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    path = str(tmp_path / "m.safetensors")
    ndl.save(model.state_dict(), path)
    arrays = load_file(path)  # the safetensors package itself
    assert sorted(arrays) == sorted(model.state_dict())
    from safetensors.torch import load_file as torch_load
    tensors = torch_load(path)
    np.testing.assert_array_equal(tensors["2.weight"].numpy(),
                                  model.state_dict()["2.weight"].numpy())


def test_foreign_safetensors_loads_as_arrays(tmp_path):
    path = str(tmp_path / "foreign.safetensors")
    arrays = {"w": np.random.randn(2, 3).astype(np.float32), "n": np.arange(3, dtype=np.int32)}
    save_file(arrays, path)
    back = ndl.load(path)
    assert set(back) == {"w", "n"} and all(isinstance(v, np.ndarray) for v in back.values())
    assert same_bits(back["w"], arrays["w"]) and same_bits(back["n"], arrays["n"])
    lin = nn.Linear(3, 2)
    lin.load_state_dict({"weight": back["w"].T, "bias": np.zeros((1, 2))})  # usable directly


def test_save_rejects_what_it_cannot_store(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="expected a dict"):
        ndl.save([ndl.init.ones(2)], path)
    with pytest.raises(TypeError, match="cannot store object at 'a.b'"):
        ndl.save({"a": {"b": object()}}, path)
    with pytest.raises(TypeError, match="keys must be str or int"):
        ndl.save({(1, 2): 3}, path)
    with pytest.raises(ValueError, match="two tensors would be stored under key 'a.b'"):
        ndl.save({"a.b": np.zeros(1), "a": {"b": np.ones(1)}}, path)
    with pytest.raises(TypeError, match="complex128"):
        ndl.save({"c": np.zeros(2, complex)}, path)
    assert not path.exists()


# ---- bad files -----------------------------------------------------------------

def good_file(tmp_path):
    path = tmp_path / "good.safetensors"
    ndl.save({"w": ndl.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4)),
              "b": ndl.Tensor(np.ones(4, np.float32))}, path)
    return path.read_bytes()


def header_of(raw):
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8:8 + n])


def with_header(raw, header):
    n, _ = header_of(raw)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def load_error(tmp_path, raw, name="bad.safetensors"):
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(ValueError) as info:
        ndl.load(path)
    msg = str(info.value)
    assert str(path) in msg, msg  # names the file
    return msg


def test_truncated_files(tmp_path):
    raw = good_file(tmp_path)
    n, _ = header_of(raw)
    for cut in (0, 5, 8, 8 + n // 2, 8 + n, len(raw) - 1):
        msg = load_error(tmp_path, raw[:cut], f"cut{cut}.safetensors")
        assert "truncated" in msg, (cut, msg)


def test_wrong_header_length(tmp_path):
    raw = good_file(tmp_path)
    n, _ = header_of(raw)
    for bad in (n + 1000, n - 3, 2 ** 62):
        msg = load_error(tmp_path, struct.pack("<Q", bad) + raw[8:])
        assert "header length" in msg, msg


def test_wrong_dtype_string(tmp_path):
    raw = good_file(tmp_path)
    _, header = header_of(raw)
    header["w"]["dtype"] = "F33"
    msg = load_error(tmp_path, with_header(raw, header))
    assert "tensor 'w' has an unknown dtype string 'F33'" in msg, msg


def test_shape_that_does_not_match_the_data(tmp_path):
    raw = good_file(tmp_path)
    _, header = header_of(raw)
    header["w"]["shape"] = [3, 5]
    msg = load_error(tmp_path, with_header(raw, header))
    assert "tensor 'w' of shape (3, 5) and dtype F32 needs 60 bytes" in msg, msg
    assert "hold 48" in msg, msg
    _, header = header_of(raw)
    header["b"]["shape"], header["b"]["data_offsets"] = [6], [56, 80]  # the data is 64 bytes
    msg = load_error(tmp_path, with_header(raw, header))
    assert "tensor 'b' ends at byte" in msg and "(truncated)" in msg, msg


def test_files_that_are_not_safetensors(tmp_path):
    np.savez(tmp_path / "a.npz", w=np.ones(3))
    msg = load_error(tmp_path, (tmp_path / "a.npz").read_bytes(), "a.npz")
    assert "not a valid safetensors file" in msg
    load_error(tmp_path, np.random.default_rng(0).bytes(4096), "noise.bin")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ndl.load(tmp_path / "missing.safetensors")


class Payload:
    """A pickle that would create a file if anyone unpickled it."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    raw = pickle.dumps({"w": Payload(str(marker))})
    load_error(tmp_path, raw, "evil.pt")
    assert not marker.exists()
    # nor through torch's own format, a zip of pickles
    torch.save({"w": torch.ones(2)}, tmp_path / "t.pt")
    load_error(tmp_path, (tmp_path / "t.pt").read_bytes(), "t2.pt")


def test_bad_needle_metadata(tmp_path):
    raw = good_file(tmp_path)
    _, header = header_of(raw)
    meta = json.loads(header["__metadata__"]["needle"])
    meta["__dict__"].append(["ghost", {"__tensor__": "ghost", "kind": "Tensor"}])
    header["__metadata__"]["needle"] = json.dumps(meta)
    msg = load_error(tmp_path, with_header(raw, header))
    assert "ghost" in msg and "metadata" in msg
    header["__metadata__"]["needle"] = "{not json"
    assert "metadata" in load_error(tmp_path, with_header(raw, header))
    meta = json.loads(header_of(raw)[1]["__metadata__"]["needle"])
    meta["__dict__"] = meta["__dict__"][:1]  # a tensor nobody names
    header["__metadata__"]["needle"] = json.dumps(meta)
    assert "not named by the metadata" in load_error(tmp_path, with_header(raw, header))


# ---- pickling and deepcopy -----------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pickle_tensor(dtype, device):
    x = special(np.dtype(dtype).type)
    for t in (ndl.Tensor(x, dtype=dtype, device=device),
              ndl.Tensor(x, dtype=dtype, requires_grad=False, device=device),
              nn.Parameter(ndl.Tensor(x, dtype=dtype, device=device))):
        for back in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t)):
            assert type(back) is type(t) and back is not t
            assert back.requires_grad == t.requires_grad and back.dtype == dtype
            assert back.device == t.device and same_bits(back, x)
            assert back.op is None and back.grad is None


def test_pickle_tensor_drops_the_graph_and_copies():
    a = ndl.Tensor(np.ones(3, np.float32))
    b = (a * 2).exp()
    back = copy.deepcopy(b)
    assert back.op is None and len(back.inputs) == 0
    assert same_bits(back, b)
    c = copy.deepcopy(a)
    c.data = c.data + 1  # independent storage
    assert a.numpy()[0] == 1.0
    a.note = "kept"
    assert pickle.loads(pickle.dumps(a)).note == "kept"  # instance attributes travel


def test_pickle_ndarray_views_come_back_compact(device):
    base = NDArray(np.arange(24, dtype=np.float64).reshape(4, 6), dtype="float64", device=device)
    for view in (base, base.permute((1, 0)), base[1:3, ::2], base.broadcast_to((2, 4, 6))):
        for back in (pickle.loads(pickle.dumps(view)), copy.deepcopy(view)):
            assert type(back) is NDArray and back.dtype == "float64" and back.device == device
            assert back.is_compact() and back.shape == view.shape
            np.testing.assert_array_equal(back.numpy(), view.numpy())
            assert back._handle.ptr() != view._handle.ptr()
    assert pickle.loads(pickle.dumps(device)) is device


def test_deepcopy_module_and_optimizer_together(device):
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 8, device=device), nn.BatchNorm1d(8, device=device),
                          nn.ReLU(), nn.Linear(8, 2, device=device))
    opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = ndl.Tensor(np.random.randn(6, 4).astype(np.float32), device=device)
    model(x).sum().backward()
    opt.step()
    model2, opt2 = copy.deepcopy((model, opt))
    assert all(p is q for p, q in zip(opt2.params, model2.parameters()))  # links kept
    assert set(map(id, opt2.u)) == set(map(id, model2.parameters()))
    for k, v in model.state_dict().items():
        assert model2.state_dict()[k].device == device and same_bits(model2.state_dict()[k], v)
    model2.parameters()[0].data = model2.parameters()[0].data * 0  # independent
    assert np.abs(model.parameters()[0].numpy()).sum() > 0
    model.eval(), model2.eval()
    model3, opt3 = pickle.loads(pickle.dumps((model, opt)))
    assert all(p is q for p, q in zip(opt3.params, model3.parameters()))
    assert same_bits(model3(x), model(x))
    for p, q in zip(opt.params, opt3.params):
        assert same_bits(opt3.u[q], opt.u[p])


def test_model_sent_to_another_process():
    np.random.seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x = np.random.randn(4, 3).astype(np.float32)
    code = ("import pickle, sys\n"
            "model, x = pickle.load(sys.stdin.buffer)\n"
            "import needle as ndl\n"
            "sys.stdout.buffer.write(model(ndl.Tensor(x)).numpy().tobytes())\n")
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((model, x)),
                         capture_output=True, cwd=ROOT, check=True, timeout=120).stdout
    assert out == model(ndl.Tensor(x)).numpy().tobytes()


def test_np_mode(tmp_path):
    """state_dict, needle.save/load and pickling with NEEDLE_BACKEND=np."""
    code = textwrap.dedent(f"""
        import copy, pickle, numpy as np, needle as ndl
        m = ndl.nn.Sequential(ndl.nn.Linear(3, 4), ndl.nn.BatchNorm1d(4))
        path = {str(tmp_path / "np.safetensors")!r}
        ndl.save({{"model": m.state_dict()}}, path)
        m2 = ndl.nn.Sequential(ndl.nn.Linear(3, 4), ndl.nn.BatchNorm1d(4))
        m2.load_state_dict(ndl.load(path)["model"])
        for k, v in m.state_dict().items():
            assert m2.state_dict()[k].numpy().tobytes() == v.numpy().tobytes(), k
        t = pickle.loads(pickle.dumps(m.parameters()[0]))
        assert t.numpy().tobytes() == m.parameters()[0].numpy().tobytes()
        copy.deepcopy(m)
        print("ok")
    """)
    env = dict(os.environ, NEEDLE_BACKEND="np")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
