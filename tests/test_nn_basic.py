"""needle.nn basic layers and module machinery (API.md 6.1-6.4; items 10.1, 10.2, 10.4,
10.17).

Every layer's forward value and gradients (input and parameters) are compared
with the equivalent PyTorch computation using the same weights. The upstream
gradient is a random tensor G (the scalar ``sum(y * G)`` is differentiated), so
a wrong gradient cannot hide behind a symmetric all-ones seed. Where PyTorch
differs from the contract (running variance, Dropout's mask), the reference is
the contract's formula written in NumPy.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import needle as ndl
import needle.nn as nn

SEED = 4242
FWD = dict(rtol=1e-5, atol=1e-5)
BWD = dict(rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def nd(a, requires_grad=True, device=None):
    return ndl.Tensor(np.asarray(a, dtype=np.float32), requires_grad=requires_grad, device=device)


def th(a, requires_grad=True):
    return torch.tensor(np.asarray(a, dtype=np.float32), requires_grad=requires_grad)


def npy(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t.numpy()


def backward_with(y, g):
    """Differentiate sum(y * G) in needle or torch."""
    if isinstance(y, torch.Tensor):
        (y * th(g, False)).sum().backward()
    else:
        (y * nd(g, False, y.device)).sum().backward()


def assert_close(a, b, tol=FWD):
    a, b = npy(a), npy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, **tol)


def set_param(module, name, value, device=None):
    setattr(module, name, nn.Parameter(nd(value, device=device)))


def ku_bound(fan_in):
    return np.sqrt(2.0) * np.sqrt(3.0 / fan_in)


# --------------------------------------------------------------------------
# Parameter / Module machinery (6.1)
# --------------------------------------------------------------------------

def test_parameter_is_tensor_sharing_data():
    t = ndl.Tensor(np.random.randn(3, 2), requires_grad=False)
    p = nn.Parameter(t)
    assert isinstance(p, ndl.Tensor) and isinstance(p, nn.Parameter)
    assert p.requires_grad is True
    assert p.realize_cached_data()._handle.ptr() == t.realize_cached_data()._handle.ptr()
    np.testing.assert_array_equal(p.numpy(), t.numpy())


class _Leaf(nn.Module):
    def __init__(self, tag):
        super().__init__()
        self.tag = tag
        self.w = nn.Parameter(nd(np.full((2,), tag)))

    def forward(self, x, scale=1.0):
        return x * scale


class _Nested(nn.Module):
    """Parameters hidden in every container kind the contract names."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(nd([1.0]))
        self.plain = nd([2.0])                       # plain Tensor: skipped
        self.running = ndl.init.zeros(3)             # statistic: skipped
        self.number = 3.0
        self.child = _Leaf(10.0)
        self.items = [nn.Parameter(nd([3.0])), _Leaf(20.0),
                      (nn.Parameter(nd([4.0])), {"k": nn.Parameter(nd([5.0])), "m": _Leaf(30.0)})]
        self.table = {"x": nn.Parameter(nd([6.0])), "y": [_Leaf(40.0)]}
        self.b = nn.Parameter(nd([7.0]))

    def forward(self, x):
        return x


def test_parameters_order_and_contents():
    m = _Nested()
    ps = m.parameters()
    expected = [m.a, m.child.w, m.items[0], m.items[1].w, m.items[2][0], m.items[2][1]["k"],
                m.items[2][1]["m"].w, m.table["x"], m.table["y"][0].w, m.b]
    assert type(ps) is list
    assert len(ps) == len(expected)
    assert all(p is e for p, e in zip(ps, expected))
    assert all(isinstance(p, nn.Parameter) for p in ps)
    assert m.parameters() is not ps, "parameters() must return a new list"


def test_parameters_no_dedup_and_replaced_by_plain_tensor():
    m = _Nested()
    m.again = m.a                     # same Parameter twice: listed twice
    m.b = nd([7.0])                   # Parameter replaced by a plain Tensor: skipped
    ps = m.parameters()
    assert sum(p is m.a for p in ps) == 2
    assert len(ps) == 10
    assert all(p is not m.b for p in ps)


def test_children_preorder():
    m = _Nested()
    seq = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Identity()), m)
    kids = seq._children()
    inner = seq.modules[1]
    expected = [seq.modules[0], inner, inner.modules[0], inner.modules[1], m,
                m.child, m.items[1], m.items[2][1]["m"], m.table["y"][0]]
    assert len(kids) == len(expected)
    assert all(k is e for k, e in zip(kids, expected))


def test_train_eval_recurse():
    m = _Nested()
    outer = nn.Sequential(nn.Residual(nn.Sequential(nn.Dropout(0.5), m)), nn.BatchNorm1d(2))
    every = [outer] + list(outer._children())
    assert len(every) == 10
    assert all(x.training is True for x in every)
    outer.eval()
    assert all(x.training is False for x in every)
    assert m.items[2][1]["m"].training is False
    outer.train()
    assert all(x.training is True for x in every)


def test_call_forwards_args_and_kwargs():
    leaf = _Leaf(1.0)
    y = leaf(nd([1.0, 2.0]), scale=3.0)
    np.testing.assert_allclose(y.numpy(), [3.0, 6.0])


# --------------------------------------------------------------------------
# Linear (6.2, item 10.2)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fin, fout", [(5, 7), (1, 3), (8, 1), (16, 4)])
def test_linear_seeded_init(fin, fout):
    np.random.seed(SEED)
    lin = nn.Linear(fin, fout)
    after = np.random.rand()
    np.random.seed(SEED)
    w = np.random.rand(fin, fout) * 2 * ku_bound(fin) - ku_bound(fin)
    b = (np.random.rand(fout, 1) * 2 * ku_bound(fout) - ku_bound(fout)).reshape(1, fout)
    assert after == np.random.rand(), "Linear must draw exactly weight then bias"
    assert isinstance(lin.weight, nn.Parameter) and isinstance(lin.bias, nn.Parameter)
    assert lin.weight.shape == (fin, fout) and lin.bias.shape == (1, fout)
    assert lin.in_features == fin and lin.out_features == fout
    assert lin.weight.dtype == "float32" and lin.bias.dtype == "float32"
    assert lin.weight.requires_grad and lin.bias.requires_grad
    np.testing.assert_allclose(lin.weight.numpy(), w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lin.bias.numpy(), b, rtol=1e-6, atol=1e-6)
    ps = lin.parameters()
    assert len(ps) == 2 and ps[0] is lin.weight and ps[1] is lin.bias


def test_linear_no_bias_seeded_init():
    np.random.seed(SEED)
    lin = nn.Linear(4, 3, bias=False)
    after = np.random.rand()
    np.random.seed(SEED)
    w = np.random.rand(4, 3) * 2 * ku_bound(4) - ku_bound(4)
    assert after == np.random.rand(), "bias=False must draw only the weight"
    assert lin.bias is None
    np.testing.assert_allclose(lin.weight.numpy(), w, rtol=1e-6, atol=1e-6)
    ps = lin.parameters()
    assert len(ps) == 1 and ps[0] is lin.weight


def test_sequential_seeded_construction_order():
    np.random.seed(SEED)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    np.random.seed(SEED)
    refs = [np.random.rand(3, 4) * 2 * ku_bound(3) - ku_bound(3),
            (np.random.rand(4, 1) * 2 * ku_bound(4) - ku_bound(4)).reshape(1, 4),
            np.random.rand(4, 2) * 2 * ku_bound(4) - ku_bound(4),
            (np.random.rand(2, 1) * 2 * ku_bound(2) - ku_bound(2)).reshape(1, 2)]
    ps = model.parameters()
    assert [p.shape for p in ps] == [(3, 4), (1, 4), (4, 2), (1, 2)]
    for p, r in zip(ps, refs):
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-6, atol=1e-6)


LINEAR_CASES = [
    # (in, out, bias, x shape)
    (5, 7, True, (4, 5)),
    (5, 7, False, (4, 5)),
    (3, 2, True, (1, 3)),
    (6, 4, True, (2, 3, 6)),        # leading batch dims
    (6, 4, False, (2, 3, 6)),
    (4, 5, True, (2, 2, 3, 4)),
]


@pytest.mark.parametrize("fin, fout, bias, xshape", LINEAR_CASES)
def test_linear_vs_torch(fin, fout, bias, xshape, device):
    lin = nn.Linear(fin, fout, bias=bias, device=device)
    x = np.random.randn(*xshape)
    g = np.random.randn(*xshape[:-1], fout)

    xn = nd(x, device=device)
    y = lin(xn)
    backward_with(y, g)

    xt, wt = th(x), th(lin.weight.numpy().T)
    bt = th(lin.bias.numpy().reshape(-1)) if bias else None
    yt = F.linear(xt, wt, bt)
    backward_with(yt, g)

    assert y.shape == tuple(yt.shape)
    assert_close(y, yt)
    assert_close(xn.grad, xt.grad, BWD)
    assert_close(lin.weight.grad, wt.grad.T, BWD)
    if bias:
        assert lin.bias.grad.shape == (1, fout)
        assert_close(lin.bias.grad, bt.grad.reshape(1, fout), BWD)


@pytest.mark.parametrize("xshape", [(4, 5), (2, 3, 5)])
def test_linear_with_1d_bias_replacement(xshape):
    lin = nn.Linear(5, 3)
    b = np.random.randn(3)
    lin.bias = nn.Parameter(nd(b))
    x = np.random.randn(*xshape)
    g = np.random.randn(*xshape[:-1], 3)
    xn = nd(x)
    y = lin(xn)
    backward_with(y, g)
    xt, wt, bt = th(x), th(lin.weight.numpy().T), th(b)
    yt = F.linear(xt, wt, bt)
    backward_with(yt, g)
    assert_close(y, yt)
    assert lin.bias.grad.shape == (3,)
    assert_close(lin.bias.grad, bt.grad, BWD)
    assert_close(lin.weight.grad, wt.grad.T, BWD)


def test_linear_reads_weight_attribute_each_call():
    lin = nn.Linear(2, 2, bias=False)
    lin.weight = nn.Parameter(nd(np.eye(2) * 3))
    np.testing.assert_allclose(lin(nd([[1.0, 2.0]])).numpy(), [[3.0, 6.0]])


@pytest.mark.parametrize("fin, xshape", [(5, (4, 6)), (5, (4, 4)), (3, (2, 3, 2))])
def test_linear_shape_mismatch_raises(fin, xshape):
    lin = nn.Linear(fin, 2)
    with pytest.raises((ValueError, AssertionError)) as info:
        lin(nd(np.random.randn(*xshape)))
    msg = str(info.value)
    assert str(xshape[-1]) in msg and str(fin) in msg, msg


# --------------------------------------------------------------------------
# elementwise activations, Identity, Flatten
# --------------------------------------------------------------------------

ACTIVATIONS = [
    ("relu", nn.ReLU, torch.relu),
    ("sigmoid", nn.Sigmoid, torch.sigmoid),
    ("tanh", nn.Tanh, torch.tanh),
    ("identity", nn.Identity, lambda t: t * 1.0),
]


@pytest.mark.parametrize("name, make, ref", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5), (7,)])
def test_activation_vs_torch(name, make, ref, shape, device):
    x = np.random.randn(*shape) * 3
    x.flat[0] = 0.0                       # boundary: relu'(0) = 0 in both
    x.flat[-1] = 12.0                     # saturation region
    g = np.random.randn(*shape)
    m = make()
    xn, xt = nd(x, device=device), th(x)
    y, yt = m(xn), ref(xt)
    backward_with(y, g)
    backward_with(yt, g)
    assert_close(y, yt)
    assert_close(xn.grad, xt.grad, BWD)
    assert m.parameters() == []


def test_sigmoid_extreme_inputs_finite():
    y = nn.Sigmoid()(nd([-30.0, 0.0, 30.0]))
    np.testing.assert_allclose(y.numpy(), [0.0, 0.5, 1.0], atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4), (3, 4, 2), (4, 1, 2), (1, 6, 1)])
def test_flatten_vs_torch(shape):
    x = np.random.randn(*shape)
    n = int(np.prod(shape[1:]))
    g = np.random.randn(shape[0], n)
    xn, xt = nd(x), th(x)
    y, yt = nn.Flatten()(xn), torch.flatten(xt, 1)
    backward_with(y, g)
    backward_with(yt, g)
    assert y.shape == (shape[0], n)
    assert_close(y, yt)
    assert_close(xn.grad, xt.grad, BWD)


# --------------------------------------------------------------------------
# Sequential, Residual
# --------------------------------------------------------------------------

def _torch_linear(lin):
    t = torch.nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(lin.weight.numpy().T.copy()))
        if lin.bias is not None:
            t.bias.copy_(torch.from_numpy(lin.bias.numpy().reshape(-1)))
    return t


def test_sequential_vs_torch():
    l1, l2, l3 = nn.Linear(6, 8), nn.Linear(8, 5, bias=False), nn.Linear(5, 3)
    model = nn.Sequential(l1, nn.Tanh(), l2, nn.ReLU(), l3, nn.Sigmoid())
    assert isinstance(model.modules, tuple) and len(model.modules) == 6
    assert model.modules[0] is l1 and model.modules[4] is l3
    ps = model.parameters()
    assert len(ps) == 5
    assert [id(p) for p in ps] == [id(l1.weight), id(l1.bias), id(l2.weight), id(l3.weight),
                                   id(l3.bias)]
    t1, t2, t3 = _torch_linear(l1), _torch_linear(l2), _torch_linear(l3)
    tmodel = torch.nn.Sequential(t1, torch.nn.Tanh(), t2, torch.nn.ReLU(), t3, torch.nn.Sigmoid())

    x, g = np.random.randn(4, 6), np.random.randn(4, 3)
    xn, xt = nd(x), th(x)
    y, yt = model(xn), tmodel(xt)
    backward_with(y, g)
    backward_with(yt, g)
    assert_close(y, yt)
    assert_close(xn.grad, xt.grad, BWD)
    assert_close(l1.weight.grad, t1.weight.grad.T, BWD)
    assert_close(l1.bias.grad, t1.bias.grad.reshape(1, -1), BWD)
    assert_close(l2.weight.grad, t2.weight.grad.T, BWD)
    assert_close(l3.bias.grad, t3.bias.grad.reshape(1, -1), BWD)


def test_sequential_empty_is_identity():
    x = nd(np.random.randn(2, 3))
    np.testing.assert_array_equal(nn.Sequential()(x).numpy(), x.numpy())


def test_residual_vs_torch():
    lin = nn.Linear(5, 5)
    res = nn.Residual(nn.Sequential(lin, nn.ReLU()))
    assert res.parameters()[0] is lin.weight and len(res.parameters()) == 2
    tl = _torch_linear(lin)
    x, g = np.random.randn(3, 5), np.random.randn(3, 5)
    xn, xt = nd(x), th(x)
    y, yt = res(xn), torch.relu(tl(xt)) + xt
    backward_with(y, g)
    backward_with(yt, g)
    assert_close(y, yt)
    assert_close(xn.grad, xt.grad, BWD)
    assert_close(lin.weight.grad, tl.weight.grad.T, BWD)
    assert_close(lin.bias.grad, tl.bias.grad.reshape(1, -1), BWD)


# --------------------------------------------------------------------------
# SoftmaxLoss
# --------------------------------------------------------------------------

@pytest.mark.parametrize("batch, k, scale", [(5, 3, 1.0), (1, 4, 1.0), (8, 10, 5.0),
                                             (4, 2, 100.0), (6, 1, 1.0)])
def test_softmax_loss_vs_torch(batch, k, scale, device):
    logits = np.random.randn(batch, k) * scale
    labels = np.random.randint(0, k, size=batch)
    ln = nd(logits, device=device)
    loss = nn.SoftmaxLoss()(ln, ndl.Tensor(labels, requires_grad=False, device=device))
    loss.backward()
    lt = th(logits)
    ref = F.cross_entropy(lt, torch.from_numpy(labels).long())
    ref.backward()
    assert loss.shape == ()
    assert isinstance(loss, ndl.Tensor)
    np.testing.assert_allclose(loss.numpy(), ref.item(), rtol=1e-5, atol=1e-5)
    assert_close(ln.grad, lt.grad, BWD)


def test_softmax_loss_large_logits_finite():
    logits = nd([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]])
    loss = nn.SoftmaxLoss()(logits, ndl.Tensor([1, 1], requires_grad=False))
    # row 0: label logit 0 vs max 1e4 -> 1e4; row 1: correct -> 0; mean 5000
    np.testing.assert_allclose(loss.numpy(), 5000.0, rtol=1e-5)


@pytest.mark.parametrize("labels, bad", [([0, 3, 1], "3"), ([0, 1, 7], "7"),
                                         ([-1, 0, 1], "-1"), ([2, -4, 0], "-4")])
def test_softmax_loss_bad_label_raises(labels, bad):
    logits = nd(np.random.randn(3, 3))
    with pytest.raises(ValueError) as info:
        nn.SoftmaxLoss()(logits, ndl.Tensor(labels, requires_grad=False))
    assert bad in str(info.value), str(info.value)


# --------------------------------------------------------------------------
# LayerNorm1d
# --------------------------------------------------------------------------

# (no large offset with a tiny spread: that case is ill-conditioned in float32 for
# any implementation, torch's included)
@pytest.mark.parametrize("n, dim, scale, offset", [(4, 6, 1.0, 2.0), (1, 5, 1.0, 0.0),
                                                   (7, 3, 10.0, 2.0), (3, 16, 0.01, 0.0)])
def test_layernorm1d_vs_torch(n, dim, scale, offset, device):
    ln = nn.LayerNorm1d(dim, device=device)
    assert ln.weight.shape == (dim,) and ln.bias.shape == (dim,)
    np.testing.assert_array_equal(ln.weight.numpy(), np.ones(dim))
    np.testing.assert_array_equal(ln.bias.numpy(), np.zeros(dim))
    ps = ln.parameters()
    assert len(ps) == 2 and ps[0] is ln.weight and ps[1] is ln.bias

    w, b = np.random.randn(dim), np.random.randn(dim)
    set_param(ln, "weight", w, device)
    set_param(ln, "bias", b, device)
    x = np.random.randn(n, dim) * scale + offset
    g = np.random.randn(n, dim)
    xn, xt, wt, bt = nd(x, device=device), th(x), th(w), th(b)
    y = ln(xn)
    yt = F.layer_norm(xt, (dim,), wt, bt, eps=1e-5)
    backward_with(y, g)
    backward_with(yt, g)
    assert_close(y, yt, dict(rtol=1e-4, atol=1e-4))
    assert_close(xn.grad, xt.grad, dict(rtol=1e-3, atol=1e-3))
    assert_close(ln.weight.grad, wt.grad, BWD)
    assert_close(ln.bias.grad, bt.grad, BWD)


def test_layernorm1d_eps():
    ln = nn.LayerNorm1d(2, eps=0.5)
    x = np.array([[1.0, 3.0]])
    # mean 2, var 1 -> (x - 2)/sqrt(1.5)
    np.testing.assert_allclose(ln(nd(x)).numpy(), [[-1 / np.sqrt(1.5), 1 / np.sqrt(1.5)]],
                               rtol=1e-6)


# --------------------------------------------------------------------------
# BatchNorm1d / BatchNorm2d (6.3, item 10.1)
# --------------------------------------------------------------------------

def test_batchnorm1d_construction():
    bn = nn.BatchNorm1d(4)
    assert bn.dim == 4 and bn.eps == 1e-5 and bn.momentum == 0.1
    bn2 = nn.BatchNorm1d(3, eps=1e-3, momentum=0.25)
    assert bn2.eps == 1e-3 and bn2.momentum == 0.25
    np.testing.assert_array_equal(bn.weight.numpy(), np.ones(4))
    np.testing.assert_array_equal(bn.bias.numpy(), np.zeros(4))
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(4))
    np.testing.assert_array_equal(bn.running_var.numpy(), np.ones(4))
    assert not isinstance(bn.running_mean, nn.Parameter)
    assert not isinstance(bn.running_var, nn.Parameter)
    ps = bn.parameters()
    assert len(ps) == 2 and ps[0] is bn.weight and ps[1] is bn.bias


@pytest.mark.parametrize("n, dim", [(8, 4), (2, 3), (16, 1), (5, 7)])
def test_batchnorm1d_train_vs_torch(n, dim, device):
    bn = nn.BatchNorm1d(dim, device=device)
    w, b = np.random.randn(dim), np.random.randn(dim)
    set_param(bn, "weight", w, device)
    set_param(bn, "bias", b, device)
    x = np.random.randn(n, dim) * 3 + 1
    g = np.random.randn(n, dim)
    xn, xt, wt, bt = nd(x, device=device), th(x), th(w), th(b)
    y = bn(xn)
    yt = F.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    backward_with(y, g)
    backward_with(yt, g)
    assert_close(y, yt, dict(rtol=1e-4, atol=1e-4))
    assert_close(xn.grad, xt.grad, dict(rtol=1e-3, atol=1e-3))
    assert_close(bn.weight.grad, wt.grad, BWD)
    assert_close(bn.bias.grad, bt.grad, BWD)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0, 0.0])
def test_batchnorm1d_running_stats_formula(momentum):
    n, dim = 6, 3
    bn = nn.BatchNorm1d(dim, momentum=momentum)
    rm, rv = np.zeros(dim), np.ones(dim)
    for _ in range(4):
        x = np.random.randn(n, dim) * 2 + 3
        bn(nd(x))
        mu, var = x.mean(0), x.var(0)                    # biased (divide by N)
        rm = (1 - momentum) * rm + momentum * mu
        rv = (1 - momentum) * rv + momentum * var
        np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-5, atol=1e-5)
        # statistics stay detached: no graph survives into the next step
        assert bn.running_mean.requires_grad is False and bn.running_mean.is_leaf()
        assert bn.running_var.requires_grad is False and bn.running_var.is_leaf()
        assert bn.running_mean.shape == (dim,) and bn.running_var.shape == (dim,)
    assert len(bn.parameters()) == 2


def test_batchnorm1d_running_var_is_biased_not_torch_unbiased():
    # with N = 2 the unbiased estimate is twice the biased one: the formula must pick biased
    x = np.array([[0.0], [2.0]])
    bn = nn.BatchNorm1d(1, momentum=1.0)
    bn(nd(x))
    np.testing.assert_allclose(bn.running_var.numpy(), [1.0], rtol=1e-6)
    np.testing.assert_allclose(bn.running_mean.numpy(), [1.0], rtol=1e-6)


def test_batchnorm1d_eval_uses_running_stats():
    dim = 4
    bn = nn.BatchNorm1d(dim, eps=1e-3)
    w, b = np.random.randn(dim), np.random.randn(dim)
    set_param(bn, "weight", w)
    set_param(bn, "bias", b)
    for _ in range(3):                                   # build up non-trivial statistics
        bn(nd(np.random.randn(5, dim) * 2 + 1))
    rm, rv = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    bn.eval()
    x, g = np.random.randn(3, dim), np.random.randn(3, dim)
    xn = nd(x)
    y = bn(xn)
    backward_with(y, g)
    expected = w * (x - rm) / np.sqrt(rv + 1e-3) + b
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    # vs torch's eval path with the same statistics
    xt, wt, bt = th(x), th(w), th(b)
    yt = F.batch_norm(xt, torch.from_numpy(rm), torch.from_numpy(rv), wt, bt,
                      training=False, eps=1e-3)
    backward_with(yt, g)
    assert_close(y, yt)
    assert_close(xn.grad, xt.grad, BWD)
    assert_close(bn.weight.grad, wt.grad, BWD)
    # eval leaves the statistics alone
    np.testing.assert_array_equal(bn.running_mean.numpy(), rm)
    np.testing.assert_array_equal(bn.running_var.numpy(), rv)
    # eval output for a single sample is well defined (no batch statistics)
    assert bn(nd(np.random.randn(1, dim))).shape == (1, dim)


def test_batchnorm1d_train_ignores_running_stats():
    bn = nn.BatchNorm1d(2)
    bn.running_mean = nd([100.0, -100.0], requires_grad=False)
    bn.running_var = nd([50.0, 50.0], requires_grad=False)
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    y = bn(nd(x)).numpy()
    expected = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 2, 3, 3), (1, 4, 2, 2), (3, 1, 5, 2)])
def test_batchnorm2d_train_vs_torch(shape, device):
    c = shape[1]
    bn = nn.BatchNorm2d(c, device=device)
    assert isinstance(bn, nn.BatchNorm1d)
    w, b = np.random.randn(c), np.random.randn(c)
    set_param(bn, "weight", w, device)
    set_param(bn, "bias", b, device)
    x = np.random.randn(*shape) * 2 + 0.5
    g = np.random.randn(*shape)
    tbn = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(w))
        tbn.bias.copy_(torch.from_numpy(b))
    tbn.train()
    xn, xt = nd(x, device=device), th(x)
    y, yt = bn(xn), tbn(xt)
    backward_with(y, g)
    backward_with(yt, g)
    assert y.shape == shape
    assert_close(y, yt, dict(rtol=1e-4, atol=1e-4))
    assert_close(xn.grad, xt.grad, dict(rtol=1e-3, atol=1e-3))
    assert_close(bn.weight.grad, tbn.weight.grad, dict(rtol=1e-4, atol=1e-4))
    assert_close(bn.bias.grad, tbn.bias.grad, BWD)
    # running statistics per channel: biased variance (formula, not torch's unbiased)
    mu, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * var, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean.numpy(), tbn.running_mean.numpy(),
                               rtol=1e-5, atol=1e-5)


def test_batchnorm2d_eval():
    c = 3
    bn = nn.BatchNorm2d(c)
    bn(nd(np.random.randn(2, c, 3, 3) * 2 + 1))
    rm, rv = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    bn.eval()
    x = np.random.randn(2, c, 2, 4)
    y = bn(nd(x)).numpy()
    expected = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.running_mean.numpy(), rm)


# --------------------------------------------------------------------------
# Dropout (6.4, item 10.4)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4), (10,)])
def test_dropout_train_mask_from_global_rng(p, shape, device):
    """The mask drawn on the host, packed and used on x's device (Note [Dropout mask on
    the device], ops_dropout.c)."""
    x = np.random.randn(*shape)
    g = np.random.randn(*shape)
    drop = nn.Dropout(p)
    assert drop.p == p and drop.training is True
    np.random.seed(SEED)
    xn = nd(x, device=device)
    y = drop(xn)
    after = np.random.rand()
    backward_with(y, g)
    np.random.seed(SEED)
    mask = (np.random.rand(*shape) <= 1 - p).astype(np.float32)
    assert after == np.random.rand(), "Dropout must draw exactly rand(*x.shape), even when p=0"
    expected = x.astype(np.float32) * mask / np.float32(1 - p)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xn.grad.numpy(), g * mask / (1 - p), rtol=1e-5, atol=1e-6)
    assert y.shape == shape and y.device == device and xn.grad.device == device


def test_dropout_default_p():
    assert nn.Dropout().p == 0.5


@pytest.mark.parametrize("p", [0.0, 0.5, 0.99])
def test_dropout_eval_is_identity_without_draw(p):
    x = np.random.randn(3, 4)
    drop = nn.Dropout(p)
    drop.eval()
    np.random.seed(SEED)
    xn = nd(x)
    y = drop(xn)
    after = np.random.rand()
    np.random.seed(SEED)
    assert after == np.random.rand(), "Dropout must not draw in eval mode"
    np.testing.assert_array_equal(y.numpy(), x.astype(np.float32))
    y.sum().backward()
    np.testing.assert_array_equal(xn.grad.numpy(), np.ones((3, 4), np.float32))


def test_dropout_in_model_follows_train_eval():
    model = nn.Sequential(nn.Identity(), nn.Dropout(0.5))
    x = nd(np.ones((50, 50)))
    model.eval()
    np.testing.assert_array_equal(model(x).numpy(), np.ones((50, 50)))
    model.train()
    vals = np.unique(model(x).numpy())
    assert set(vals.tolist()) == {0.0, 2.0}


# --------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------

def test_identity():
    x = nd(np.random.randn(2, 3))
    y = nn.Identity()(x)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    assert nn.Identity().parameters() == []
