"""Models of the course's later homeworks (API.md 9.3): ResNet9 for CIFAR-10
and the language model over a sequence model.

>>> model = ResNet9()                                   # doctest: +SKIP
>>> model(ndl.Tensor(np.zeros((2, 3, 32, 32), "float32"))).shape  # doctest: +SKIP
(2, 10)

The import-time seed below is part of the course's numbers.
"""
import os
import sys
from typing import Optional

import numpy as np

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402

np.random.seed(0)


def ConvBN(a: int, b: int, k: int, s: int, device=None, dtype: str = "float32") -> nn.Module:
    """Conv(a, b, k, stride=s) -> BatchNorm2d(b) -> ReLU()."""
    return nn.Sequential(nn.Conv(a, b, k, stride=s, device=device, dtype=dtype),
                         nn.BatchNorm2d(b, device=device, dtype=dtype), nn.ReLU())


class ResNet9(nn.Module):
    """(N, 3, 32, 32) NCHW images -> (N, 10) logits; 431,946 parameters."""

    def __init__(self, device=None, dtype: str = "float32"):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.model = nn.Sequential(
            ConvBN(3, 16, 7, 4, **kw),
            ConvBN(16, 32, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(32, 32, 3, 1, **kw), ConvBN(32, 32, 3, 1, **kw))),
            ConvBN(32, 64, 3, 2, **kw),
            ConvBN(64, 128, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(128, 128, 3, 1, **kw),
                                      ConvBN(128, 128, 3, 1, **kw))),
            nn.Flatten(),
            nn.Linear(128, 128, **kw),
            nn.ReLU(),
            nn.Linear(128, 10, **kw),
        )

    def forward(self, x: ndl.Tensor) -> ndl.Tensor:
        return self.model(x)


class FashionResNet(nn.Module):
    """ResNet9's design for 1x28x28 images: (N, 784) or (N, 1, 28, 28) -> (N, 10).

    ConvBN(1, c1, 3, 1) at 28x28; ConvBN(c1, c2, 3, 2) to 14x14 and a residual
    pair; ConvBN(c2, c3, 3, 2) to 7x7 and ConvBN(c3, c4, 3, 2) to 4x4 and a
    residual pair; Flatten; Linear(16*c4, hidden); ReLU; Linear(hidden, 10).
    (ResNet9's 7x7 stride-4 stem would leave 7x7 of a 28x28 image.)
    """

    def __init__(self, channels=(16, 32, 64, 128), hidden: int = 128, device=None,
                 dtype: str = "float32"):
        super().__init__()
        c1, c2, c3, c4 = channels
        kw = dict(device=device, dtype=dtype)
        self.model = nn.Sequential(
            ConvBN(1, c1, 3, 1, **kw),
            ConvBN(c1, c2, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(c2, c2, 3, 1, **kw), ConvBN(c2, c2, 3, 1, **kw))),
            ConvBN(c2, c3, 3, 2, **kw),
            ConvBN(c3, c4, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(c4, c4, 3, 1, **kw), ConvBN(c4, c4, 3, 1, **kw))),
            nn.Flatten(),
            nn.Linear(16 * c4, hidden, **kw),
            nn.ReLU(),
            nn.Linear(hidden, 10, **kw),
        )

    def forward(self, x: ndl.Tensor) -> ndl.Tensor:
        return self.model(x.reshape((x.shape[0], 1, 28, 28)))


class LanguageModel(nn.Module):
    """Embedding -> sequence model -> Linear over (T, bs) token indices.

    forward(x (T, bs), h=None) -> (logits (T*bs, output_size), h), where h is
    the sequence model's final state ((h, c) for an LSTM; zeros for a
    Transformer, which keeps no state between calls).
    EXT, for seq_model='transformer' only: `num_head` (dim_head defaults to
    embedding_size // num_head, which must divide), `dim_head` and `dropout`;
    left out, the contract's Transformer defaults (8 heads of 32, dropout 0).
    """

    def __init__(self, embedding_size: int, output_size: int, hidden_size: int,
                 num_layers: int = 1, seq_model: str = "rnn", seq_len: int = 40,
                 device=None, dtype: str = "float32", *, num_head: Optional[int] = None,
                 dim_head: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.embedding = nn.Embedding(output_size, embedding_size, **kw)
        if seq_model == "rnn":
            self.seq_model = nn.RNN(embedding_size, hidden_size, num_layers, **kw)
        elif seq_model == "lstm":
            self.seq_model = nn.LSTM(embedding_size, hidden_size, num_layers, **kw)
        elif seq_model == "transformer":
            heads = {}
            if num_head is not None:
                if dim_head is None and (num_head < 1 or embedding_size % num_head):
                    raise ValueError(f"LanguageModel: num_head={num_head} does not divide "
                                     f"embedding_size={embedding_size} (or pass dim_head)")
                heads = dict(num_head=num_head,
                             dim_head=dim_head or embedding_size // num_head)
            elif dim_head is not None:
                heads = dict(dim_head=dim_head)
            self.seq_model = nn.Transformer(embedding_size, hidden_size, num_layers,
                                            sequence_len=seq_len, dropout=dropout, **heads,
                                            **kw)
        else:
            raise ValueError(f"seq_model must be 'rnn', 'lstm' or 'transformer', "
                             f"got {seq_model!r}")
        out_in = embedding_size if seq_model == "transformer" else hidden_size
        self.linear = nn.Linear(out_in, output_size, **kw)

    def forward(self, x: ndl.Tensor, h: Optional[object] = None):
        seq_len, bs = x.shape
        emb = self.embedding(x)                      # (T, bs, E)
        out, h = self.seq_model(emb, h)              # (T, bs, H)
        out = self.linear(out.reshape((seq_len * bs, out.shape[2])))
        return out, h
