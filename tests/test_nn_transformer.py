"""needle.nn transformer modules (API.md 6.6) against PyTorch references built
from torch primitives (float64) with the same weights.

- MultiHeadAttention, AttentionLayer (self and cross attention), TransformerLayer
  and Transformer (batch_first or not), causal and not, dropout 0: outputs and
  the gradient of every parameter and input, for random upstream gradients.
- With dropout: the reference draws its masks with np.random in the
  contract's order (attention probs, attention output, after ReLU, after
  Linear2), so equal outputs mean the same draws in the same order; equal
  seeds give equal outputs.
- Construction draws the contract's numbers in the contract's order.
- create_causal_mask, matmul and softmax against the contract's formulas.
- LayerNorm1d on N-D input; LanguageModel(seq_model='transformer').
- Bad input raises a ValueError naming the shapes.
"""
import math
import os
import sys

import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from needle import ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32_MAX = float(np.finfo(np.float32).max)
FWD = dict(rtol=1e-4, atol=1e-5)
BWD = dict(rtol=1e-3, atol=1e-4)


def T(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def params_to_torch(module):
    return [T(p.numpy()).requires_grad_(True) for p in module.parameters()]


def check_grads(module, tparams):
    for i, (p, tp) in enumerate(zip(module.parameters(), tparams)):
        assert p.grad is not None, f"parameter {i} has no gradient"
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), **BWD, err_msg=f"param {i}")


# ---- torch references ----------------------------------------------------------

def t_mha(q, k, v, causal, masks=None, p=0.0):
    D = q.shape[-1]
    logits = q @ k.transpose(-1, -2) / math.sqrt(D)
    if causal:
        i, j = logits.shape[-2:]
        logits = logits + T(-F32_MAX * np.triu(np.ones((i, j)), j - i + 1))
    probs = torch.softmax(logits, -1)
    if masks is not None:
        probs = probs * T(masks.pop(0)) / (1 - p)
    return probs @ v, probs


def t_layernorm(x, w, b):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)


def t_attention(P, q, k, v, H, D, causal, masks=None, p=0.0):
    """P: prenorm q/k/v weight and bias, Wq, Wk, Wv, Wo (the module's parameter order)."""
    nq, bq, nk, bk, nv, bv, Wq, Wk, Wv, Wo = P

    def heads(x, w, b, W):
        B, L, _ = x.shape
        return (t_layernorm(x, w, b) @ W).reshape(B, L, H, D).transpose(1, 2)

    r, _ = t_mha(heads(q, nq, bq, Wq), heads(k, nk, bk, Wk), heads(v, nv, bv, Wv), causal,
                 masks, p)
    B, L = q.shape[:2]
    return r.transpose(1, 2).reshape(B, L, H * D) @ Wo


def t_layer(P, x, H, D, causal, masks=None, p=0.0):
    """P: the 10 attention tensors, W1, b1, W2, b2, norm weight, norm bias."""
    W1, b1, W2, b2, nw, nb = P[10:]

    def drop(y):
        return y if masks is None else y * T(masks.pop(0)) / (1 - p)

    x = x + drop(t_attention(P[:10], x, x, x, H, D, causal, masks, p))
    B, L, F = x.shape
    y = drop(torch.relu(t_layernorm(x.reshape(B * L, F), nw, nb) @ W1 + b1))
    return x + drop(y @ W2 + b2).reshape(B, L, F)


def t_transformer(P, x, H, D, causal, batch_first, num_layers):
    if not batch_first:
        x = x.transpose(0, 1)
    L = x.shape[1]
    x = x + P[0][:L].unsqueeze(0)
    for i in range(num_layers):
        x = t_layer(P[1 + 16 * i: 17 + 16 * i], x, H, D, causal)
    return x.transpose(0, 1) if not batch_first else x


def nd(a, requires_grad=True, device=None):
    return ndl.Tensor(np.asarray(a, dtype=np.float32), requires_grad=requires_grad, device=device)


def backward_both(out, tout):
    G = np.random.randn(*out.shape)
    (out * nd(G, False, out.device)).sum().backward()
    (tout * T(G)).sum().backward()


# ---- MultiHeadAttention --------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B,H,Tq,S,D", [(2, 3, 5, 5, 4), (1, 2, 3, 7, 8), (2, 1, 6, 4, 5)])
def test_multihead_attention(causal, B, H, Tq, S, D, device):
    q, k, v = np.random.randn(B, H, Tq, D), np.random.randn(B, H, S, D), \
        np.random.randn(B, H, S, D)
    attn = nn.MultiHeadAttention(causal=causal, device=device)
    Q, K, V = nd(q, device=device), nd(k, device=device), nd(v, device=device)
    out, probs = attn(Q, K, V)
    tq, tk, tv = (T(a).requires_grad_(True) for a in (q, k, v))
    tout, tprobs = t_mha(tq, tk, tv, causal)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), **FWD)
    np.testing.assert_allclose(probs.numpy(), tprobs.detach().numpy(), **FWD)
    backward_both(out, tout)
    for a, ta in ((Q, tq), (K, tk), (V, tv)):
        np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), **BWD)


def test_causal_mask_is_the_contracts():
    attn = nn.MultiHeadAttention()
    for i, j in ((4, 4), (3, 6), (1, 5)):
        m = attn.create_causal_mask(i, j, ndl.cpu())
        ref = -F32_MAX * np.triu(np.ones((1, 1, i, j), np.float32), j - i + 1)
        assert m.shape == (1, 1, i, j)
        np.testing.assert_array_equal(m.numpy(), ref.astype(np.float32))


def test_matmul_and_softmax_are_the_contracts_formulas():
    """Batched matmul vs broadcast-multiply-sum, fused softmax vs the shifted composition."""
    attn = nn.MultiHeadAttention()
    a, b = np.random.randn(2, 3, 4, 5), np.random.randn(2, 3, 6, 5)
    ref = (a[:, :, :, None, :] * b[:, :, None, :, :]).sum(-1)
    np.testing.assert_allclose(attn.matmul(nd(a), nd(b)).numpy(), ref, rtol=1e-5, atol=1e-5)
    z = np.random.randn(2, 3, 4, 6) * 5
    e = np.exp(z - z.max(-1, keepdims=True))
    np.testing.assert_allclose(attn.softmax(nd(z)).numpy(), e / e.sum(-1, keepdims=True),
                               rtol=1e-5, atol=1e-7)


# ---- AttentionLayer -------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_attention_layer(causal, cross, device):
    B, L, S, F, H, D = 2, 5, 7, 6, 3, 4
    kf, vf, of = (5, 3, 8) if cross else (None, None, None)
    layer = nn.AttentionLayer(F, H, D, k_features=kf, v_features=vf, out_features=of,
                              causal=causal, device=device)
    # non-trivial norm weights, so that their gradients are tested too
    for p in layer.parameters()[:6]:
        p.data = p.data + nd(np.random.randn(*p.shape) * 0.3, False, device)
    q = np.random.randn(B, L, F)
    k = np.random.randn(B, S, kf) if cross else None
    v = np.random.randn(B, S, vf) if cross else None
    Q = nd(q, device=device)
    out = layer(Q, nd(k, device=device) if cross else None,
                nd(v, device=device) if cross else None)
    P = params_to_torch(layer)
    tq = T(q).requires_grad_(True)
    tout = t_attention(P, tq, T(k) if cross else tq, T(v) if cross else tq, H, D, causal)
    assert out.shape == (B, L, of or F)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), **FWD)
    backward_both(out, tout)
    check_grads(layer, P)
    np.testing.assert_allclose(Q.grad.numpy(), tq.grad.numpy(), **BWD)


def test_attention_layer_construction_order_and_draws():
    np.random.seed(3)
    layer = nn.AttentionLayer(6, 2, 5, k_features=4, out_features=7)
    np.random.seed(3)
    bound = lambda fan_in: math.sqrt(6.0 / fan_in)  # noqa: E731
    ref = [np.ones(6), np.zeros(6), np.ones(4), np.zeros(4), np.ones(6), np.zeros(6)]
    for fin, fout in ((6, 10), (4, 10), (6, 10), (10, 7)):
        ref.append(np.random.rand(fin, fout) * 2 * bound(fin) - bound(fin))
    names = ["prenorm_q", "prenorm_k", "prenorm_v", "q_projection", "k_projection",
             "v_projection", "attn", "out_projection"]
    assert [k for k in vars(layer) if k in names] == names
    assert len(layer.parameters()) == len(ref)
    for p, r in zip(layer.parameters(), ref):
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-6, atol=1e-7)
    assert (layer.num_head, layer.dim_head, layer.q_features, layer.k_features,
            layer.v_features, layer.out_features) == (2, 5, 6, 4, 6, 7)


# ---- TransformerLayer and Transformer ---------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_transformer_layer(causal, device):
    B, L, F, H, D, hidden = 2, 6, 8, 2, 3, 12
    layer = nn.TransformerLayer(F, H, D, hidden, causal=causal, device=device)
    x = np.random.randn(B, L, F)
    X = nd(x, device=device)
    out = layer(X)
    P = params_to_torch(layer)
    tx = T(x).requires_grad_(True)
    tout = t_layer(P, tx, H, D, causal)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), **FWD)
    backward_both(out, tout)
    check_grads(layer, P)
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), **BWD)


def test_transformer_layer_dropout_draws_in_the_contracts_order():
    B, L, F, H, D, hidden, p = 2, 5, 6, 2, 3, 10, 0.3
    layer = nn.TransformerLayer(F, H, D, hidden, dropout=p)
    x = np.random.randn(B, L, F)
    np.random.seed(11)
    out = layer(nd(x)).numpy()
    np.random.seed(11)
    masks = [np.random.rand(*s) <= 1 - p for s in ((B, H, L, L), (B, L, F), (B * L, hidden),
                                                    (B * L, F))]
    ref = t_layer(params_to_torch(layer), T(x), H, D, True, masks, p)
    assert not masks
    np.testing.assert_allclose(out, ref.detach().numpy(), **FWD)
    np.random.seed(11)
    np.testing.assert_array_equal(layer(nd(x)).numpy(), out)
    layer.eval()
    state = np.random.get_state()[1].copy()
    layer(nd(x))
    assert np.array_equal(np.random.get_state()[1], state), "eval mode must not draw"


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_transformer(batch_first, causal, device):
    B, L, F, H, D, hidden, layers = 3, 5, 8, 2, 4, 16, 2
    model = nn.Transformer(F, hidden, layers, num_head=H, dim_head=D, causal=causal,
                           batch_first=batch_first, sequence_len=7, device=device)
    x = np.random.randn(*((B, L, F) if batch_first else (L, B, F)))
    X = nd(x, device=device)
    out, h = model(X)
    assert isinstance(h, ndl.Tensor) and h.shape == out.shape and not h.numpy().any()
    P = params_to_torch(model)
    tx = T(x).requires_grad_(True)
    tout = t_transformer(P, tx, H, D, causal, batch_first, layers)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), **FWD)
    backward_both(out, tout)
    check_grads(model, P)
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), **BWD)


def test_transformer_construction_order_and_seeded_dropout():
    np.random.seed(5)
    model = nn.Transformer(6, 10, 2, num_head=2, dim_head=3, dropout=0.2, sequence_len=9)
    np.random.seed(5)
    pos = np.random.randn(9, 6)
    first_q = np.random.rand(6, 6) * 2 - 1
    np.testing.assert_allclose(model.parameters()[0].numpy(), pos, rtol=1e-6)
    np.testing.assert_allclose(model.parameters()[7].numpy(), first_q * math.sqrt(6 / 6),
                               rtol=1e-6, atol=1e-7)
    assert len(model.parameters()) == 1 + 2 * 16
    x = nd(np.random.randn(4, 2, 6))
    np.random.seed(1)
    a = model(x)[0].numpy()
    np.random.seed(1)
    b = model(x)[0].numpy()
    np.random.seed(2)
    c = model(x)[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_layernorm1d_nd_input():
    x = np.random.randn(2, 3, 4, 5)
    ln = nn.LayerNorm1d(5)
    ln.weight.data = nd(np.random.randn(5), False)
    ln.bias.data = nd(np.random.randn(5), False)
    X = nd(x)
    out = ln(X)
    tw, tb, tx = T(ln.weight.numpy()), T(ln.bias.numpy()), T(x)
    for t in (tw, tb, tx):
        t.requires_grad_(True)
    tout = t_layernorm(tx, tw, tb)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), **FWD)
    backward_both(out, tout)
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), **BWD)
    np.testing.assert_allclose(ln.weight.grad.numpy(), tw.grad.numpy(), **BWD)
    np.testing.assert_allclose(ln.bias.grad.numpy(), tb.grad.numpy(), **BWD)


def test_language_model_transformer():
    sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]
    from models import LanguageModel
    model = LanguageModel(16, 30, 24, num_layers=2, seq_model="transformer", seq_len=8,
                          num_head=4)
    assert model.linear.weight.shape == (16, 30)
    assert model.seq_model.layers.modules[0].attention.dim_head == 4
    x = ndl.Tensor(np.random.randint(0, 30, (8, 3)).astype(np.float32), requires_grad=False)
    out, h = model(x)
    assert out.shape == (24, 30)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="num_head=3 does not divide embedding_size=16"):
        LanguageModel(16, 30, 24, seq_model="transformer", num_head=3)


# ---- bad input ----------------------------------------------------------------

def test_bad_input_raises_naming_the_shapes():
    layer = nn.AttentionLayer(6, 2, 3)
    with pytest.raises(ValueError, match=r"q_features=6.*\(2, 4, 5\)"):
        layer(nd(np.zeros((2, 4, 5))))
    model = nn.Transformer(6, 8, 1, num_head=2, dim_head=3, sequence_len=4)
    with pytest.raises(ValueError, match=r"features=6.*\(5, 2, 7\)"):
        model(nd(np.zeros((5, 2, 7))))
    with pytest.raises(ValueError, match=r"longer than sequence_len=4.*\(5, 2, 6\)"):
        model(nd(np.zeros((5, 2, 6))))
    attn = nn.MultiHeadAttention(causal=True)
    q = nd(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"mask must broadcast to the logits "
                                         r"\(1, 2, 3, 3\).*\(4, 3\)"):
        attn(q, q, q, mask=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 4\) and \(1, 2, 3, 5\)"):
        attn(q, nd(np.zeros((1, 2, 3, 5))), q)
    with pytest.raises(ValueError, match="4-D"):
        attn(nd(np.zeros((2, 3, 4))), q, q)
    with pytest.raises(ValueError, match="num_head and dim_head must be >= 1"):
        nn.AttentionLayer(6, 0, 3)


def test_additive_mask_matches_reference():
    attn = nn.MultiHeadAttention()
    q = np.random.randn(1, 2, 3, 4)
    mask = np.where(np.random.rand(3, 3) < 0.3, -F32_MAX, 0.0).astype(np.float32)
    out, probs = attn(nd(q), nd(q), nd(q), mask=mask)
    logits = T(q) @ T(q).transpose(-1, -2) / 2.0 + T(mask)
    np.testing.assert_allclose(probs.numpy(), torch.softmax(logits, -1).numpy(), **FWD)


def test_lm_job_transformer_end_to_end(tmp_path, capsys):
    """apps/train_lm.py --seq-model transformer on a tiny made-up fortunes directory."""
    sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]
    import train_lm
    d = tmp_path / "fortunes"
    d.mkdir()
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    (d / "wisdom").write_text("\n%\n".join(" ".join(rng.choice(words, 12)) + "."
                                            for _ in range(120)))
    ckpt = str(tmp_path / "lm.npz")
    res = train_lm.main(["--seq-model", "transformer", "--data-dir", str(d), "--epochs", "2",
                         "--hidden", "16", "--embedding", "8", "--heads", "2", "--layers", "1",
                         "--batch-size", "4", "--seq-len", "8", "--checkpoint", ckpt,
                         "--plot", "", "--sample-words", "12"])
    out = capsys.readouterr().out
    assert "epoch 2: train perplexity" in out and "transformer" in out
    hist = res["history"]
    assert hist["train"][1] < hist["train"][0] and hist["test"][1] < hist["test"][0]  # learning
    # the default final LayerNorm and the sliding-window held-out perplexity
    assert "held-out perplexity with at least 4 words of context" in out
    assert 1 < res["sliding"] < 1.5 * hist["test"][1]
    train_lm.main(["--evaluate", ckpt, "--sample-words", "5"])
    assert len(capsys.readouterr().out.split()) >= 1


def test_np_mode_gives_the_same_model():
    """The same seeded Transformer in np mode (float64 arrays) and nd mode (float32)."""
    import json
    import subprocess
    import textwrap
    code = textwrap.dedent("""
        import json, numpy as np, needle as ndl
        np.random.seed(7)
        m = ndl.nn.Transformer(8, 12, 2, num_head=2, dim_head=4, dropout=0.2, sequence_len=6)
        x = ndl.Tensor(np.random.randn(5, 3, 8))
        out, _ = m(x)
        out.sum().backward()
        print(json.dumps([out.numpy().tolist(), m.parameters()[5].grad.numpy().tolist()]))
    """)
    env = dict(os.environ, NEEDLE_BACKEND="np")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    np_out, np_grad = (np.array(a) for a in json.loads(res.stdout.strip().splitlines()[-1]))
    np.random.seed(7)
    m = nn.Transformer(8, 12, 2, num_head=2, dim_head=4, dropout=0.2, sequence_len=6)
    x = ndl.Tensor(np.random.randn(5, 3, 8).astype(np.float32))
    out, _ = m(x)
    out.sum().backward()
    np.testing.assert_allclose(out.numpy(), np_out, **FWD)
    np.testing.assert_allclose(m.parameters()[5].grad.numpy(), np_grad, **BWD)
