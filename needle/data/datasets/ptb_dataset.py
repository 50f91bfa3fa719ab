"""Penn Treebank language-modelling data (API.md 8.3).

>>> corpus = Corpus("data/ptb")                             # doctest: +SKIP
>>> train = batchify(corpus.train, 16, None, None)          # doctest: +SKIP
>>> X, y = get_batch(train, 0, bptt=40)   # (40, 16), (640,)  # doctest: +SKIP
"""
from __future__ import annotations

import operator
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from ...autograd import Tensor

__all__ = ["Dictionary", "Corpus", "batchify", "get_batch"]


class Dictionary:
    """A two-way mapping between words and consecutive ids 0, 1, 2, ...

    >>> d = Dictionary()
    >>> d.add_word("a"), d.add_word("b"), d.add_word("a"), len(d)
    (0, 1, 0, 2)
    """

    def __init__(self):
        self.word2idx: Dict[str, int] = {}
        self.idx2word: List[str] = []

    def add_word(self, word: str) -> int:
        """The id of ``word``, added with the next free id if new."""
        idx = self.word2idx.get(word)
        if idx is None:
            idx = len(self.idx2word)
            self.word2idx[word] = idx
            self.idx2word.append(word)
        return idx

    def __len__(self) -> int:
        return len(self.idx2word)


class Corpus:
    """Token ids of ``base_dir/train.txt`` and ``base_dir/test.txt``.

    ``train`` is tokenized first, so ids follow first appearance in train,
    then in test. Each line contributes its whitespace-separated words and
    ``'<eos>'``; ``max_lines`` limits the lines read from each file.

    >>> import os, tempfile, needle as ndl
    >>> d = tempfile.mkdtemp()
    >>> for name, lines in [("train.txt", ["the cat sat", "the dog"]), ("test.txt", ["a cat"])]:
    ...     with open(os.path.join(d, name), "w") as f:
    ...         print(*lines, sep=os.linesep, file=f)
    >>> corpus = ndl.data.Corpus(d)
    >>> corpus.train, corpus.test
    ([0, 1, 2, 3, 0, 4, 3], [5, 1, 3])
    >>> corpus.dictionary.idx2word[:4]
    ['the', 'cat', 'sat', '<eos>']
    """

    def __init__(self, base_dir: str, max_lines: Optional[int] = None):
        self.dictionary = Dictionary()
        self.train = self.tokenize(os.path.join(base_dir, "train.txt"), max_lines)
        self.test = self.tokenize(os.path.join(base_dir, "test.txt"), max_lines)

    def tokenize(self, path: str, max_lines: Optional[int] = None) -> List[int]:
        """Add the words of ``path`` (at most ``max_lines`` lines) and return their ids."""
        if max_lines is not None and max_lines < 0:
            raise ValueError(f"max_lines must be >= 0 or None, got {max_lines}")
        ids: List[int] = []
        add = self.dictionary.add_word
        with open(path, "r", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if max_lines is not None and i >= max_lines:
                    break
                for word in line.split():
                    ids.append(add(word))
                ids.append(add("<eos>"))
        return ids


def batchify(data, batch_size: int, device=None, dtype=None) -> np.ndarray:
    """Arrange the id sequence ``data`` as ``batch_size`` contiguous columns.

    Returns a NumPy array (nbatch, batch_size), nbatch = len(data) // batch_size,
    whose column j is ``data[j*nbatch:(j+1)*nbatch]``; leftover ids are dropped.
    ``device`` and ``dtype`` are accepted for the course's signature and unused.

    >>> batchify(list(range(7)), 2, None, None)
    array([[0, 3],
           [1, 4],
           [2, 5]])
    """
    batch_size = operator.index(batch_size)
    if batch_size < 1:
        raise ValueError(f"batchify: batch_size must be >= 1, got {batch_size}")
    data = np.asarray(data)
    if data.ndim != 1:
        raise ValueError(f"batchify: data must be a flat sequence of ids, got shape {data.shape}")
    nbatch = len(data) // batch_size
    return data[:nbatch * batch_size].reshape(batch_size, nbatch).T


def get_batch(batches: np.ndarray, i: int, bptt: int, device=None,
              dtype=None) -> Tuple[Tensor, Tensor]:
    """Inputs rows ``i:i+L`` and next-token targets rows ``i+1:i+1+L`` of ``batches``.

    ``L = min(bptt, len(batches) - 1 - i)``. Returns ``(X (L, bs), y (L*bs,))`` as
    Tensors on ``device`` with ``dtype`` ("float32" when None); y is flattened
    row-major, so ``y[t*bs + j]`` is the token after ``X[t, j]``.

    >>> import numpy as np, needle as ndl
    >>> batches = ndl.data.batchify(np.arange(12), 2)      # (6, 2)
    >>> X, y = ndl.data.get_batch(batches, 0, 3)
    >>> X
    needle.Tensor([[0. 6.]
     [1. 7.]
     [2. 8.]])
    >>> y
    needle.Tensor([1. 7. 2. 8. 3. 9.])
    """
    i = operator.index(i)
    bptt = operator.index(bptt)
    if bptt < 1:
        raise ValueError(f"get_batch: bptt must be >= 1, got {bptt}")
    seq_len = min(bptt, len(batches) - 1 - i)
    if i < 0 or seq_len < 1:
        raise ValueError(f"get_batch: start row {i} leaves no (input, target) pair in "
                         f"{len(batches)} rows (need 0 <= i <= {len(batches) - 2})")
    if dtype is None:
        dtype = "float32"
    data = np.asarray(batches[i:i + seq_len])
    target = np.asarray(batches[i + 1:i + 1 + seq_len]).reshape(-1)
    return (Tensor(data, device=device, dtype=dtype),
            Tensor(target, device=device, dtype=dtype))
