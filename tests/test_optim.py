"""needle.optim (API.md 7; items 10.5, 10.6, 10.28; 3.1 TENSOR_COUNTER).

The reference for every optimizer is the contract's update rule written in NumPy
(float32), fed with gradients that PyTorch computes for the same model and the
same parameter values; where PyTorch's own optimizer has the same rule (plain
SGD, with or without weight decay; Adam, whose weight decay is also "add wd*θ
to the gradient") the whole trajectory is also compared with torch.optim.
"""
import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import needle as ndl
import needle.autograd as ag
import needle.nn as nn
import needle.optim as optim

SEED = 777
STEPS = 6


# --------------------------------------------------------------------------
# a small model and its independent (torch) twin
# --------------------------------------------------------------------------

def make_problem(n=16, d=4, h=8, k=3, device=None):
    """The model on `device` (cpu() by default; the `device` fixture's cuda case
    runs the same steps on the GPU, against the same NumPy/torch references)."""
    np.random.seed(SEED)
    model = nn.Sequential(nn.Linear(d, h, device=device), nn.ReLU(),
                          nn.Linear(h, k, device=device))
    X = np.random.randn(n, d).astype(np.float32)
    y = np.random.randint(0, k, size=n)
    return model, X, y


def needle_loss(model, X, y):
    dev = model.parameters()[0].device
    return nn.SoftmaxLoss()(model(ndl.Tensor(X, device=dev, requires_grad=False)),
                            ndl.Tensor(y, device=dev, requires_grad=False))


def torch_loss(thetas, X, y):
    """Same network in needle's layout: W (in, out), b (1, out)."""
    w1, b1, w2, b2 = thetas
    z = torch.relu(torch.from_numpy(X) @ w1 + b1) @ w2 + b2
    return F.cross_entropy(z, torch.from_numpy(y).long())


def torch_grads(thetas_np, X, y):
    ts = [torch.tensor(t, requires_grad=True) for t in thetas_np]
    torch_loss(ts, X, y).backward()
    return [t.grad.numpy().astype(np.float32) for t in ts]


def np32(x):
    return np.asarray(x, dtype=np.float32)


def sgd_reference(thetas, X, y, lr, momentum, wd, steps):
    thetas = [np32(t).copy() for t in thetas]
    u = [np.zeros_like(t) for t in thetas]
    history = []
    for _ in range(steps):
        grads = torch_grads(thetas, X, y)
        for i, g in enumerate(grads):
            gt = g + np.float32(wd) * thetas[i]
            u[i] = np.float32(momentum) * u[i] + np.float32(1 - momentum) * gt
            thetas[i] = thetas[i] - np.float32(lr) * u[i]
        history.append(([t.copy() for t in thetas], [x.copy() for x in u]))
    return history


def adam_reference(thetas, X, y, lr, b1, b2, eps, wd, steps):
    thetas = [np32(t).copy() for t in thetas]
    m = [np.zeros_like(t) for t in thetas]
    v = [np.zeros_like(t) for t in thetas]
    history = []
    for t in range(1, steps + 1):
        grads = torch_grads(thetas, X, y)
        for i, g in enumerate(grads):
            gt = g + np.float32(wd) * thetas[i]
            m[i] = np.float32(b1) * m[i] + np.float32(1 - b1) * gt
            v[i] = np.float32(b2) * v[i] + np.float32(1 - b2) * gt * gt
            mh = m[i] / np.float32(1 - b1 ** t)
            vh = v[i] / np.float32(1 - b2 ** t)
            thetas[i] = thetas[i] - np.float32(lr) * mh / (np.sqrt(vh) + np.float32(eps))
        history.append(([x.copy() for x in thetas], [x.copy() for x in m],
                        [x.copy() for x in v]))
    return history


def needle_step(opt, model, X, y):
    opt.reset_grad()
    loss = needle_loss(model, X, y)
    loss.backward()
    opt.step()
    return loss


def same_steps_as_torch(opt, topt, model, ts, X, y):
    """STEPS steps of opt on model and of topt on its torch twin ts: the same values."""
    for step in range(STEPS):
        needle_step(opt, model, X, y)
        topt.zero_grad()
        torch_loss(ts, X, y).backward()
        topt.step()
        for p, t in zip(model.parameters(), ts):
            np.testing.assert_allclose(p.numpy(), t.detach().numpy(), **PTOL,
                                       err_msg=f"step {step}")


def check_float32_leaf(p):
    assert p.dtype == "float32"
    assert p.numpy().dtype == np.float32
    assert p.is_leaf(), "parameters must stay leaves (updates go through .data)"


PTOL = dict(rtol=1e-4, atol=2e-5)


# --------------------------------------------------------------------------
# Optimizer base
# --------------------------------------------------------------------------

def test_optimizer_base():
    model, X, y = make_problem()
    params = model.parameters()
    opt = optim.Optimizer(params)
    assert opt.params is params
    with pytest.raises(NotImplementedError):
        opt.step()


@pytest.mark.parametrize("make_opt", [lambda ps: optim.SGD(ps, lr=0.1),
                                      lambda ps: optim.Adam(ps, lr=0.1),
                                      lambda ps: optim.Optimizer(ps)],
                         ids=["SGD", "Adam", "Optimizer"])
def test_reset_grad_sets_none(make_opt):
    model, X, y = make_problem()
    opt = make_opt(model.parameters())
    needle_loss(model, X, y).backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.reset_grad()
    assert all(p.grad is None for p in model.parameters())


def test_defaults():
    model, _, _ = make_problem()
    sgd = optim.SGD(model.parameters())
    assert (sgd.lr, sgd.momentum, sgd.weight_decay) == (0.01, 0.0, 0.0)
    assert sgd.u == {}
    adam = optim.Adam(model.parameters())
    assert (adam.lr, adam.beta1, adam.beta2, adam.eps, adam.weight_decay) == \
        (0.01, 0.9, 0.999, 1e-8, 0.0)
    assert adam.t == 0 and adam.m == {} and adam.v == {}


# --------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------

SGD_CASES = [
    # lr, momentum, weight_decay
    (0.1, 0.0, 0.0),
    (0.5, 0.0, 0.05),
    (0.1, 0.9, 0.0),
    (0.2, 0.5, 0.01),
    (0.05, 0.99, 0.1),
]


@pytest.mark.parametrize("lr, momentum, wd", SGD_CASES)
def test_sgd_vs_formula(lr, momentum, wd, device):
    model, X, y = make_problem(device=device)
    params = model.parameters()
    unused = nn.Parameter(ndl.Tensor(np.ones((2, 2), np.float32), device=device))  # no grad
    opt = optim.SGD(params + [unused], lr=lr, momentum=momentum, weight_decay=wd)
    ref = sgd_reference([p.numpy() for p in params], X, y, lr, momentum, wd, STEPS)
    objects = [id(p) for p in params]
    for step in range(STEPS):
        opt.reset_grad()
        needle_loss(model, X, y).backward()
        old_grads = [p.grad for p in params]
        old_vals = [g.numpy().copy() for g in old_grads]
        opt.step()
        # gradients are never modified in place
        for g, v in zip(old_grads, old_vals):
            np.testing.assert_array_equal(g.numpy(), v)
        thetas, us = ref[step]
        for p, t, u in zip(params, thetas, us):
            np.testing.assert_allclose(p.numpy(), t, **PTOL, err_msg=f"step {step}")
            check_float32_leaf(p)
            if momentum:
                st = opt.u[p]
                np.testing.assert_allclose(st.numpy(), u, **PTOL, err_msg=f"u, step {step}")
                assert st.requires_grad is False and st.is_leaf()
    assert [id(p) for p in model.parameters()] == objects, "parameters replaced, not updated"
    np.testing.assert_array_equal(unused.numpy(), np.ones((2, 2)))
    assert unused not in opt.u


@pytest.mark.parametrize("lr, wd", [(0.1, 0.0), (0.3, 0.0), (0.1, 0.2)])
def test_sgd_vs_torch_without_momentum(lr, wd, device):
    model, X, y = make_problem(device=device)
    params = model.parameters()
    ts = [torch.tensor(p.numpy(), requires_grad=True) for p in params]
    topt = torch.optim.SGD(ts, lr=lr, weight_decay=wd)
    opt = optim.SGD(params, lr=lr, weight_decay=wd)
    same_steps_as_torch(opt, topt, model, ts, X, y)


def test_sgd_momentum_first_step_has_one_minus_beta_factor():
    # theta = 1, grad of sum(theta * 2) = 2: u = (1 - 0.9) * 2 = 0.2, theta = 1 - 0.5 * 0.2
    p = nn.Parameter(ndl.Tensor(np.ones(3, np.float32)))
    opt = optim.SGD([p], lr=0.5, momentum=0.9)
    (p * 2.0).sum().backward()
    opt.step()
    np.testing.assert_allclose(p.numpy(), np.full(3, 0.9), rtol=1e-6)
    (p * 2.0).sum().backward()
    opt.step()
    # u = 0.9 * 0.2 + 0.1 * 2 = 0.38
    np.testing.assert_allclose(p.numpy(), np.full(3, 0.9 - 0.5 * 0.38), rtol=1e-6)


def test_sgd_weight_decay_before_momentum():
    # grad 0 everywhere except via weight decay: gt = wd * theta
    p = nn.Parameter(ndl.Tensor(np.full(2, 2.0, np.float32)))
    opt = optim.SGD([p], lr=1.0, momentum=0.5, weight_decay=0.1)
    (p * 0.0).sum().backward()
    opt.step()
    # gt = 0.2, u = 0.5 * 0.2 = 0.1, theta = 1.9
    np.testing.assert_allclose(p.numpy(), [1.9, 1.9], rtol=1e-6)


# --------------------------------------------------------------------------
# Adam
# --------------------------------------------------------------------------

ADAM_CASES = [
    # lr, beta1, beta2, eps, weight_decay
    (0.01, 0.9, 0.999, 1e-8, 0.0),
    (0.005, 0.8, 0.99, 1e-6, 0.0),
    (0.02, 0.5, 0.9, 1e-8, 0.01),
    (0.01, 0.9, 0.999, 1e-3, 0.1),
]


@pytest.mark.parametrize("lr, b1, b2, eps, wd", ADAM_CASES)
def test_adam_vs_formula(lr, b1, b2, eps, wd, device):
    model, X, y = make_problem(device=device)
    params = model.parameters()
    unused = nn.Parameter(ndl.Tensor(np.ones(3, np.float32), device=device))
    opt = optim.Adam([unused] + params, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd)
    ref = adam_reference([p.numpy() for p in params], X, y, lr, b1, b2, eps, wd, STEPS)
    for step in range(STEPS):
        needle_step(opt, model, X, y)
        assert opt.t == step + 1, "t increments once per step(), not per parameter"
        thetas, ms, vs = ref[step]
        for p, t, m, v in zip(params, thetas, ms, vs):
            np.testing.assert_allclose(p.numpy(), t, **PTOL, err_msg=f"step {step}")
            np.testing.assert_allclose(opt.m[p].numpy(), m, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(opt.v[p].numpy(), v, rtol=1e-4, atol=1e-8)
            check_float32_leaf(p)
            for st in (opt.m[p], opt.v[p]):
                assert st.requires_grad is False and st.is_leaf() and st.dtype == "float32"
    np.testing.assert_array_equal(unused.numpy(), np.ones(3))
    assert unused not in opt.m and unused not in opt.v


@pytest.mark.parametrize("lr, b1, b2, eps, wd", ADAM_CASES)
def test_adam_vs_torch(lr, b1, b2, eps, wd, device):
    model, X, y = make_problem(device=device)
    params = model.parameters()
    ts = [torch.tensor(p.numpy(), requires_grad=True) for p in params]
    topt = torch.optim.Adam(ts, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    opt = optim.Adam(params, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd)
    same_steps_as_torch(opt, topt, model, ts, X, y)


def test_adam_first_step_is_lr_times_sign():
    # bias correction makes the first update lr * g / (|g| + eps), i.e. about lr * sign(g)
    p = nn.Parameter(ndl.Tensor(np.zeros(4, np.float32)))
    c = np.array([3.0, -0.5, 1e-3, -20.0], np.float32)
    opt = optim.Adam([p], lr=0.1, eps=1e-8)
    (p * ndl.Tensor(c, requires_grad=False)).sum().backward()
    opt.step()
    np.testing.assert_allclose(p.numpy(), -0.1 * c / (np.abs(c) + 1e-8), rtol=1e-5)


def test_adam_t_counts_steps_with_skipped_params():
    p = nn.Parameter(ndl.Tensor(np.zeros(2, np.float32)))
    q = nn.Parameter(ndl.Tensor(np.zeros(2, np.float32)))
    opt = optim.Adam([p, q], lr=0.1)
    for _ in range(3):
        opt.step()                      # all grads None: nothing to do, t still counts
    assert opt.t == 3
    np.testing.assert_array_equal(p.numpy(), [0.0, 0.0])


# --------------------------------------------------------------------------
# gradients and parameters with non-compact layouts (broadcast, transposed)
# --------------------------------------------------------------------------

_C6 = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5

LAYOUTS = [
    # id, loss of a (3, 2) parameter, its gradient
    ("sum_stride0", lambda p: p.sum(), lambda: np.ones((3, 2))),
    ("transposed", lambda p: (p.transpose() * ndl.Tensor(_C6, requires_grad=False)).sum(),
     lambda: _C6.T),
    ("broadcast", lambda p: p.reshape((3, 2, 1)).broadcast_to((3, 2, 4)).sum(),
     lambda: np.full((3, 2), 4.0)),
]

FIRST_STEP = [
    # id, optimizer, first-step update as a function of the gradient (theta starts at 0)
    ("sgd", lambda ps: optim.SGD(ps, lr=0.1), lambda g: -0.1 * g),
    ("sgd_momentum", lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5), lambda g: -0.05 * g),
    ("adam", lambda ps: optim.Adam(ps, lr=0.1), lambda g: -0.1 * g / (np.abs(g) + 1e-8)),
]


@pytest.mark.parametrize("name, make_opt, update", FIRST_STEP, ids=[c[0] for c in FIRST_STEP])
@pytest.mark.parametrize("lname, loss, grad", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_step_with_noncompact_gradient(name, make_opt, update, lname, loss, grad):
    p = nn.Parameter(ndl.Tensor(np.zeros((3, 2), np.float32)))
    opt = make_opt([p])
    loss(p).backward()
    np.testing.assert_allclose(p.grad.numpy(), grad())
    opt.step()
    np.testing.assert_allclose(p.numpy(), update(grad()), rtol=1e-5, atol=1e-7)
    check_float32_leaf(p)


@pytest.mark.parametrize("name, make_opt, update", FIRST_STEP, ids=[c[0] for c in FIRST_STEP])
def test_step_with_noncompact_parameter(name, make_opt, update, device):
    base = np.random.randn(2, 3).astype(np.float32)
    p = nn.Parameter(ndl.Tensor(base, device=device, requires_grad=False).transpose())  # view
    c = np.random.randn(3, 2).astype(np.float32)
    opt = make_opt([p])
    (p * ndl.Tensor(c, device=device, requires_grad=False)).sum().backward()
    opt.step()
    np.testing.assert_allclose(p.numpy(), base.T + update(c), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_parameter_listed_twice_is_updated_twice(kind):
    # parameters() does not de-duplicate (a shared module appears twice): each
    # occurrence applies the rule once, in order, with the same gradient
    g = np.array([1.0, -2.0, 0.5], np.float32)
    p = nn.Parameter(ndl.Tensor(np.ones(3, np.float32)))
    opt = (optim.SGD([p, p], lr=0.1, momentum=0.9, weight_decay=0.1) if kind == "sgd"
           else optim.Adam([p, p], lr=0.1, weight_decay=0.1))
    th, u, m, v = np.ones(3), np.zeros(3), np.zeros(3), np.zeros(3)
    for t in range(1, 4):
        (p * ndl.Tensor(g, requires_grad=False)).sum().backward()
        opt.step()
        for _ in range(2):
            gt = g + 0.1 * th
            if kind == "sgd":
                u = 0.9 * u + 0.1 * gt
                th = th - 0.1 * u
            else:
                m, v = 0.9 * m + 0.1 * gt, 0.999 * v + 0.001 * gt * gt
                th = th - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        np.testing.assert_allclose(p.numpy(), th, rtol=1e-5, atol=1e-6)
    if kind == "adam":
        assert opt.t == 3


def test_hyperparameters_read_at_each_step():
    # learning-rate schedules assign opt.lr between steps
    p = nn.Parameter(ndl.Tensor(np.zeros(2, np.float32)))
    opt = optim.SGD([p], lr=1.0)
    expected = 0.0
    for lr in [1.0, 0.5, 0.25, 0.0]:
        opt.lr = lr
        (p * 2.0).sum().backward()
        opt.step()
        expected -= 2.0 * lr
        np.testing.assert_allclose(p.numpy(), [expected] * 2, rtol=1e-6)


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=1, momentum=0, weight_decay=0),
    lambda ps: optim.Adam(ps, lr=1, beta1=0, beta2=0, eps=0, weight_decay=0),
], ids=["SGD", "Adam"])
def test_integer_hyperparameters(make_opt):
    p = nn.Parameter(ndl.Tensor(np.ones(2, np.float32)))
    opt = make_opt([p])
    (p * ndl.Tensor([3.0, -3.0], requires_grad=False)).sum().backward()
    opt.step()
    # SGD: 1 - 1 * (+-3); Adam with beta1 = beta2 = eps = 0: 1 - sign(g)
    expected = [-2.0, 4.0] if isinstance(opt, optim.SGD) else [0.0, 2.0]
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6)
    check_float32_leaf(p)


# --------------------------------------------------------------------------
# float32 is kept even when float64 scalars sneak in
# --------------------------------------------------------------------------

@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=np.float64(0.1), momentum=np.float64(0.9),
                         weight_decay=np.float64(0.01)),
    lambda ps: optim.Adam(ps, lr=np.float64(0.01), beta1=np.float64(0.9),
                          beta2=np.float64(0.999), eps=np.float64(1e-8),
                          weight_decay=np.float64(0.01)),
], ids=["SGD", "Adam"])
def test_params_stay_float32(make_opt):
    model, X, y = make_problem()
    opt = make_opt(model.parameters())
    for _ in range(3):
        needle_step(opt, model, X, y)
    for p in model.parameters():
        check_float32_leaf(p)
        assert isinstance(p, nn.Parameter) and p.requires_grad


# --------------------------------------------------------------------------
# clip_grad_norm
# --------------------------------------------------------------------------

@pytest.mark.parametrize("max_norm", [0.25, 1.0, 5.0, 1e3])
def test_clip_grad_norm(max_norm):
    c1 = np.random.randn(3, 2).astype(np.float32)
    c2 = np.random.randn(4).astype(np.float32)
    p1 = nn.Parameter(ndl.Tensor(np.zeros((3, 2), np.float32)))
    p2 = nn.Parameter(ndl.Tensor(np.zeros(4, np.float32)))
    unused = nn.Parameter(ndl.Tensor(np.zeros(2, np.float32)))
    opt = optim.SGD([p1, unused, p2], lr=0.1)
    ((p1 * ndl.Tensor(c1, requires_grad=False)).sum()
     + (p2 * ndl.Tensor(c2, requires_grad=False)).sum()).backward()
    total = np.sqrt((c1.astype(np.float64) ** 2).sum() + (c2.astype(np.float64) ** 2).sum())
    factor = max_norm / (total + 1e-6)
    scale = factor if factor < 1 else 1.0
    opt.clip_grad_norm(max_norm)
    np.testing.assert_allclose(p1.grad.numpy(), c1 * scale, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p2.grad.numpy(), c2 * scale, rtol=1e-5, atol=1e-7)
    assert unused.grad is None
    assert p1.grad.dtype == "float32"
    new_norm = np.sqrt((p1.grad.numpy() ** 2).sum() + (p2.grad.numpy() ** 2).sum())
    assert new_norm <= max(max_norm, total) * (1 + 1e-5)


# --------------------------------------------------------------------------
# a short training run
# --------------------------------------------------------------------------

def blobs(n_per_class=30, k=3, seed=5):
    """k well separated Gaussian blobs in 2-D (centres 4 apart, std 0.5)."""
    rng = np.random.RandomState(seed)
    centres = np.array([[0.0, 4.0], [-3.5, -2.0], [3.5, -2.0]])[:k]
    X = np.concatenate([c + 0.5 * rng.randn(n_per_class, 2) for c in centres])
    y = np.repeat(np.arange(k), n_per_class)
    return X.astype(np.float32), y


# Threshold: with this seed the initial loss is 2.49 (ln 3 = 1.10 for a
# uniform guess); the classes are separated by ~7 standard deviations, so a
# working optimizer drives the cross-entropy towards 0. The same network,
# initial weights and hyperparameters in PyTorch reach 2.3e-5 (SGD with
# momentum, dampening = momentum) and 1.7e-4 (Adam) after 200 full-batch steps.
# 0.01 leaves a wide margin for float32 differences while a wrong sign, a dead
# update, a missing bias correction or a runaway step size stay far above it.
TRAIN_CASES = [
    ("sgd", lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), 0.01),
    ("adam", lambda ps: optim.Adam(ps, lr=0.01), 0.01),
]


@pytest.mark.parametrize("name, make_opt, threshold", TRAIN_CASES,
                         ids=[c[0] for c in TRAIN_CASES])
def test_training_run_converges(name, make_opt, threshold, device):
    X, y = blobs()
    np.random.seed(SEED)
    model = nn.Sequential(nn.Linear(2, 16, device=device), nn.ReLU(),
                          nn.Linear(16, 3, device=device))
    opt = make_opt(model.parameters())
    first = None
    for _ in range(200):
        loss = needle_step(opt, model, X, y)
        first = loss.numpy().item() if first is None else first
    final = needle_loss(model, X, y).numpy().item()
    logits = model(ndl.Tensor(X, device=device, requires_grad=False)).numpy()
    assert first > 1.0, first          # not trivially solved at initialisation
    assert final < threshold, (first, final)
    assert (logits.argmax(1) == y).all()


# --------------------------------------------------------------------------
# TENSOR_COUNTER stays bounded (3.1, item 10.28)
# --------------------------------------------------------------------------

def _counter_after_gc():
    gc.collect()
    gc.collect()
    return ag.TENSOR_COUNTER


@pytest.mark.parametrize("make_opt, state_per_param", [
    (lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=1e-3), 1),
    (lambda ps: optim.Adam(ps, lr=0.001, weight_decay=1e-3), 2),
], ids=["SGD", "Adam"])
def test_tensor_counter_bounded_over_100_steps(make_opt, state_per_param):
    base = _counter_after_gc()
    np.random.seed(SEED)
    model = nn.Sequential(
        nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Linear(12, 12), nn.LayerNorm1d(12), nn.ReLU(),
                                  nn.Dropout(0.2))),
        nn.Linear(12, 3))
    params = model.parameters()
    opt = make_opt(params)
    X = np.random.randn(20, 6).astype(np.float32)
    y = np.random.randint(0, 3, size=20)
    Xt = ndl.Tensor(X, requires_grad=False)
    yt = ndl.Tensor(y, requires_grad=False)
    loss_fn = nn.SoftmaxLoss()

    def step():
        opt.reset_grad()
        loss = loss_fn(model(Xt), yt)
        loss.backward()
        opt.step()

    for _ in range(10):
        step()
    after10 = _counter_after_gc()
    for _ in range(90):
        step()
    after100 = _counter_after_gc()
    # no growth with the number of steps: one step's graph at most stays reachable
    assert after100 - after10 <= 2, (after10, after100)

    opt.reset_grad()
    final = _counter_after_gc()
    # what legitimately survives: parameters, optimizer state, BatchNorm statistics
    # (2 tensors), the two data tensors, plus a little slack
    allowed = len(params) * (1 + state_per_param) + 2 + 2 + 10
    assert final - base <= allowed, (base, final, allowed)
    del model, opt, params, Xt, yt, loss_fn
    assert _counter_after_gc() - base <= 5
