"""needle.init (API.md 5; items 10.16).

Every initialiser is checked against NumPy's global generator re-seeded to the
same state: the values must be the same draw, scaled as the contract says, and
exactly one draw must have been made (the *next* number from the generator
matches the reference's next number). Defaults: float32, ``ndl.cpu()``,
``requires_grad=False``.
"""
import math

import numpy as np
import pytest

import needle as ndl
import needle.init as init

SEED = 1234
TOL = dict(rtol=1e-6, atol=1e-6)


def _next_draw():
    """One more number from the global generator (detects extra/missing draws)."""
    return np.random.rand()


def _uniform(shape, low, high):
    return np.random.rand(*shape) * (high - low) + low


def _normal(shape, mean, std):
    return np.random.randn(*shape) * std + mean


def _xu_bound(fi, fo, gain=1.0):
    return gain * math.sqrt(6.0 / (fi + fo))


def _ku_bound(fi):
    return math.sqrt(2.0) * math.sqrt(3.0 / fi)


# (id, needle call, NumPy reference of the same draw)
RANDOM_CASES = [
    ("rand", lambda: init.rand(3, 4), lambda: np.random.rand(3, 4)),
    ("rand_low_high", lambda: init.rand(2, 3, 5, low=-2.0, high=5.0),
     lambda: _uniform((2, 3, 5), -2.0, 5.0)),
    ("rand_1d", lambda: init.rand(7), lambda: np.random.rand(7)),
    ("randn", lambda: init.randn(4, 3), lambda: np.random.randn(4, 3)),
    ("randn_mean_std", lambda: init.randn(5, 2, mean=1.5, std=3.0),
     lambda: _normal((5, 2), 1.5, 3.0)),
    ("xavier_uniform", lambda: init.xavier_uniform(4, 6),
     lambda: _uniform((4, 6), -_xu_bound(4, 6), _xu_bound(4, 6))),
    ("xavier_uniform_gain", lambda: init.xavier_uniform(5, 3, gain=2.5),
     lambda: _uniform((5, 3), -_xu_bound(5, 3, 2.5), _xu_bound(5, 3, 2.5))),
    ("xavier_normal", lambda: init.xavier_normal(4, 6),
     lambda: _normal((4, 6), 0.0, math.sqrt(2.0 / 10))),
    ("xavier_normal_gain", lambda: init.xavier_normal(3, 5, gain=0.5),
     lambda: _normal((3, 5), 0.0, 0.5 * math.sqrt(2.0 / 8))),
    ("kaiming_uniform", lambda: init.kaiming_uniform(5, 7),
     lambda: np.random.rand(5, 7) * 2 * _ku_bound(5) - _ku_bound(5)),
    ("kaiming_uniform_bias_like", lambda: init.kaiming_uniform(7, 1),
     lambda: _uniform((7, 1), -_ku_bound(7), _ku_bound(7))),
    # conv style: fans include K^2, shape sets the output shape (third positional)
    ("kaiming_uniform_shape_kw", lambda: init.kaiming_uniform(3 * 9, 8 * 9, shape=(3, 3, 3, 8)),
     lambda: _uniform((3, 3, 3, 8), -_ku_bound(27), _ku_bound(27))),
    ("kaiming_uniform_shape_pos", lambda: init.kaiming_uniform(2 * 25, 4 * 25, (5, 5, 2, 4)),
     lambda: _uniform((5, 5, 2, 4), -_ku_bound(50), _ku_bound(50))),
    ("kaiming_normal", lambda: init.kaiming_normal(6, 4),
     lambda: _normal((6, 4), 0.0, math.sqrt(2.0) / math.sqrt(6))),
    ("randb", lambda: init.randb(4, 5, p=0.3),
     lambda: (np.random.rand(4, 5) <= 0.3).astype(np.float32)),
    ("randb_default_p", lambda: init.randb(6, 3),
     lambda: (np.random.rand(6, 3) <= 0.5).astype(np.float32)),
    ("randb_float32", lambda: init.randb(3, 3, p=0.8, dtype="float32"),
     lambda: (np.random.rand(3, 3) <= 0.8).astype(np.float32)),
]


@pytest.mark.parametrize("make, reference", [c[1:] for c in RANDOM_CASES],
                         ids=[c[0] for c in RANDOM_CASES])
def test_random_initialisers_match_numpy_draw(make, reference):
    np.random.seed(SEED)
    t = make()
    after = _next_draw()
    np.random.seed(SEED)
    expected = reference()
    expected_after = _next_draw()

    got = t.numpy()
    assert isinstance(t, ndl.Tensor)
    assert t.shape == expected.shape
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected.astype(np.float32), **TOL)
    # exactly one draw of the full shape: the generator is where the reference left it
    assert after == expected_after


@pytest.mark.parametrize("make", [c[1] for c in RANDOM_CASES], ids=[c[0] for c in RANDOM_CASES])
def test_random_initialisers_defaults(make):
    t = make()
    assert t.dtype == "float32"
    assert t.device == ndl.cpu()
    assert str(t.device) == "cpu()"
    assert t.requires_grad is False
    assert t.is_leaf()


def test_randb_is_zero_one_and_p_extremes():
    assert np.all(init.randb(50, p=1.0).numpy() == 1.0)
    assert np.all(init.randb(50, p=0.0).numpy() == 0.0)
    vals = np.unique(init.randb(200, p=0.5).numpy())
    assert set(vals.tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("kw", [
    dict(requires_grad=True),
    dict(device=ndl.cpu(), requires_grad=True),
    dict(dtype="float32"),
], ids=["requires_grad", "device+requires_grad", "dtype"])
@pytest.mark.parametrize("make", [
    lambda **kw: init.xavier_uniform(3, 4, **kw),
    lambda **kw: init.xavier_normal(3, 4, **kw),
    lambda **kw: init.kaiming_uniform(3, 4, **kw),
    lambda **kw: init.kaiming_normal(3, 4, **kw),
    lambda **kw: init.rand(3, 4, **kw),
    lambda **kw: init.randn(3, 4, **kw),
    lambda **kw: init.ones(3, 4, **kw),
    lambda **kw: init.zeros(3, 4, **kw),
    lambda **kw: init.constant(3, 4, c=2.0, **kw),
], ids=["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "rand",
        "randn", "ones", "zeros", "constant"])
def test_kwargs_forwarded(make, kw):
    t = make(**kw)
    assert t.shape == (3, 4)
    assert t.requires_grad is kw.get("requires_grad", False)
    assert t.device == ndl.cpu()
    assert t.dtype == "float32"


def test_other_device_forwarded():
    dev = ndl.cpu_numpy()
    np.random.seed(SEED)
    t = init.kaiming_uniform(4, 2, device=dev)
    np.random.seed(SEED)
    ref = _uniform((4, 2), -_ku_bound(4), _ku_bound(4))
    assert t.device == dev
    np.testing.assert_allclose(t.numpy(), ref, **TOL)


@pytest.mark.parametrize("fn", [init.kaiming_uniform, init.kaiming_normal])
@pytest.mark.parametrize("nonlinearity", ["tanh", "sigmoid", "linear"])
def test_kaiming_nonlinearity_assertion(fn, nonlinearity):
    with pytest.raises(AssertionError):
        fn(3, 4, nonlinearity=nonlinearity)


def test_kaiming_nonlinearity_relu_explicit():
    np.random.seed(SEED)
    t = init.kaiming_uniform(3, 4, nonlinearity="relu")
    np.random.seed(SEED)
    np.testing.assert_allclose(t.numpy(), _uniform((3, 4), -_ku_bound(3), _ku_bound(3)), **TOL)


# --------------------------------------------------------------------------
# deterministic initialisers
# --------------------------------------------------------------------------

@pytest.mark.parametrize("make, value, shape", [
    (lambda: init.ones(2, 3), 1.0, (2, 3)),
    (lambda: init.zeros(4), 0.0, (4,)),
    (lambda: init.zeros(2, 1, 3), 0.0, (2, 1, 3)),
    (lambda: init.constant(3, 2, c=-2.5), -2.5, (3, 2)),
    (lambda: init.constant(5), 1.0, (5,)),
    (lambda: ndl.ones(2, 2), 1.0, (2, 2)),
    (lambda: ndl.zeros(3), 0.0, (3,)),
], ids=["ones", "zeros1d", "zeros3d", "constant", "constant_default_c", "ndl.ones", "ndl.zeros"])
def test_constant_family(make, value, shape):
    np.random.seed(SEED)
    t = make()
    after = _next_draw()
    np.random.seed(SEED)
    assert after == _next_draw(), "constant initialisers must not draw"
    assert t.shape == shape
    assert t.dtype == "float32"
    assert t.device == ndl.cpu()
    assert t.requires_grad is False
    np.testing.assert_array_equal(t.numpy(), np.full(shape, value, np.float32))


@pytest.mark.parametrize("labels, n", [
    ([2, 0, 1, 2], 3),
    ([0], 1),
    ([4, 4, 0], 5),
    ([[1, 0], [3, 2]], 4),
], ids=["vector", "single", "repeat", "matrix"])
def test_one_hot(labels, n):
    lab = np.array(labels)
    i = ndl.Tensor(lab, requires_grad=False)        # float32 labels in nd mode
    t = init.one_hot(n, i)
    expected = np.eye(n, dtype=np.float32)[lab]
    assert t.shape == lab.shape + (n,)
    assert t.dtype == "float32"
    assert t.device == ndl.cpu()
    assert t.requires_grad is False
    np.testing.assert_array_equal(t.numpy(), expected)


def test_one_hot_requires_grad_and_device():
    i = ndl.Tensor([1.0, 0.0], requires_grad=False)
    t = init.one_hot(3, i, device=ndl.cpu(), requires_grad=True)
    assert t.requires_grad is True
    np.testing.assert_array_equal(t.numpy(), np.eye(3, dtype=np.float32)[[1, 0]])


@pytest.mark.parametrize("fn, value", [(init.zeros_like, 0.0), (init.ones_like, 1.0),
                                       (ndl.zeros_like, 0.0), (ndl.ones_like, 1.0)],
                         ids=["zeros_like", "ones_like", "ndl.zeros_like", "ndl.ones_like"])
@pytest.mark.parametrize("shape", [(3,), (2, 5), (2, 1, 4)])
def test_like_functions(fn, value, shape):
    src = ndl.Tensor(np.random.randn(*shape), requires_grad=True)
    t = fn(src)
    assert t.shape == src.shape
    assert t.dtype == src.dtype
    assert t.device == src.device
    assert t.requires_grad is False
    np.testing.assert_array_equal(t.numpy(), np.full(shape, value, np.float32))
    t2 = fn(src, requires_grad=True, device=ndl.cpu())
    assert t2.requires_grad is True and t2.device == ndl.cpu()


def test_like_functions_keep_source_device():
    src = ndl.Tensor(np.ones((2, 2)), device=ndl.cpu_numpy())
    assert init.zeros_like(src).device == ndl.cpu_numpy()
    assert init.ones_like(src, device=ndl.cpu()).device == ndl.cpu()


@pytest.mark.parametrize("arg, expected", [
    ((3, 4), (3, 4)),
    ((10, 1), (10, 1)),
    ((3, 3, 16, 32), (16 * 9, 32 * 9)),
    ((5, 5, 2, 7), (2 * 25, 7 * 25)),
    ([1, 1, 4, 6], (4, 6)),
])
def test_calculate_fans(arg, expected):
    assert tuple(init._calculate_fans(arg)) == expected


def test_calculate_fans_of_tensor():
    w = init.kaiming_uniform(2 * 9, 6 * 9, shape=(3, 3, 2, 6))
    assert tuple(init._calculate_fans(w)) == (18, 54)
    assert tuple(init._calculate_fans(init.zeros(4, 9))) == (4, 9)
