"""Optimizer steps allocate only the new parameters (issue 14 item 3).

Adam's m and v and SGD's momentum u are updated in place: after the first
step the state Tensors and their arrays are the same objects at every step,
and the values still equal PyTorch's.
"""
import numpy as np
import pytest

import needle as ndl


def params_and_grads(seed=0):
    rng = np.random.RandomState(seed)
    ps = [ndl.Tensor(rng.randn(7, 5).astype(np.float32)),
          ndl.Tensor(rng.randn(5).astype(np.float32))]
    gs = [[rng.randn(*p.shape).astype(np.float32) for p in ps] for _ in range(4)]
    return ps, gs


@pytest.mark.parametrize("make, states", [
    (lambda ps: ndl.optim.Adam(ps, lr=0.01, weight_decay=0.1), ("m", "v")),
    (lambda ps: ndl.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1), ("u",)),
])
def test_state_is_updated_in_place_and_equals_torch(make, states):
    torch = pytest.importorskip("torch")
    ps, gs = params_and_grads()
    opt = make(ps)
    tps = [torch.tensor(p.numpy(), requires_grad=True) for p in ps]
    topt = torch.optim.Adam(tps, lr=0.01, weight_decay=0.1)
    # needle's SGD (API.md 7): u = m * u + (1 - m) * (g + wd * p), u starting at 0,
    # which no torch.optim.SGD setting reproduces: a NumPy reference instead
    ref = [p.numpy().astype(np.float64) for p in ps]
    us = [np.zeros_like(r) for r in ref]
    seen = None
    for step, grads in enumerate(gs):
        for p, tp, g in zip(ps, tps, grads):
            p.grad = ndl.Tensor(g)
            tp.grad = torch.tensor(g)
        for r, u, g in zip(ref, us, grads):
            u *= 0.9
            u += 0.1 * (g + 0.1 * r)
            r -= 0.1 * u
        opt.step()
        topt.step()
        now = [(id(getattr(opt, s)[p]), id(getattr(opt, s)[p].cached_data))
               for s in states for p in ps]
        if step > 0:
            assert now == seen, "a state Tensor or array was replaced"
        seen = now
    for p, tp, r in zip(ps, tps, ref):
        want = r if states == ("u",) else tp.detach().numpy()
        np.testing.assert_allclose(p.numpy(), want, rtol=1e-5, atol=1e-6)
