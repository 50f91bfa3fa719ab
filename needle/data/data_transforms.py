"""Image transforms (API.md 8.2). Images are H x W x C NumPy arrays.

Each transform makes exactly one call to NumPy's global generator per image,
so seeded runs reproduce the course:

>>> import numpy as np
>>> img = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
>>> np.random.seed(0)
>>> RandomFlipHorizontal(p=1.0)(img)[0, :, 0]
array([4., 2., 0.], dtype=float32)
>>> RandomCrop(padding=1)(img).shape
(2, 3, 2)

Batches (EXT). ``apply_transforms_batch(transforms, imgs)`` equals applying
the list to each image of ``imgs`` (N x H x W x C) in index order and stacking
the results: the same calls to NumPy's global generator, in the same order,
give the same values and leave the same generator state. The built-in
transforms then draw and cut the whole batch with a few array operations;
a list holding any other transform is applied image by image.

>>> imgs = np.random.rand(4, 5, 5, 1)
>>> tf = [RandomFlipHorizontal(), RandomCrop(2)]
>>> np.random.seed(1)
>>> one_by_one = np.stack([tf[1](tf[0](im)) for im in imgs])
>>> np.random.seed(1)
>>> bool((apply_transforms_batch(tf, imgs) == one_by_one).all())
True

How the draws are reproduced. Per image, transform ``t`` of the list makes
one call ``t._draw()`` (``np.random.rand()`` or ``np.random.randint(low=-p,
high=p + 1, size=2)``), so a batch of N images makes N x len(list) calls,
image-major. When every transform that consumes the generator makes the very
same call (same function, same bounds), one call with ``size=(N, k, ...)`` is
used instead: NumPy's legacy generator fills an array element by element in
C order with exactly the consumption of the scalar calls (``rand`` takes two
32-bit words per double; ``randint`` runs the same masked rejection loop per
value), and C order is image-major. ``RandomCrop(0)`` draws from
``randint(0, 1)``, a range of one value, which consumes nothing. Any other
mix (e.g. a flip and a crop) is drawn call by call in the per-image order,
and only the image operations are batched.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

__all__ = ["Transform", "RandomFlipHorizontal", "RandomCrop"]


class Transform:
    """Base class: a callable mapping one image to one image.

    ``apply_batch(imgs)`` applies the transform to each image of a batch in
    order (see the module docstring). Subclasses may take part in the batched
    path by defining ``_draw``, ``_draw_key`` and ``_apply_drawn`` next to
    ``__call__`` (as the built-in transforms do); others are applied image by
    image.

    >>> import numpy as np, needle as ndl
    >>> class Invert(ndl.data.Transform):
    ...     def __call__(self, img):
    ...         return 1.0 - img
    >>> Invert()(np.zeros((2, 2, 1)))[..., 0]
    array([[1., 1.],
           [1., 1.]])
    """

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_batch(self, imgs: np.ndarray) -> np.ndarray:
        """``np.stack([self(img) for img in imgs])``, with the same random draws."""
        return apply_transforms_batch([self], imgs)

    # ---- batched protocol (optional; all four methods in one class) -----------------
    # _draw(lead=()): the per-image random call when ``lead`` is (), else the same
    #     call with ``lead`` prepended to its size, consuming NumPy's generator like
    #     prod(lead) scalar calls in C order.
    # _draw_key(): a hashable naming that call (transforms with equal keys make the
    #     same call), or None when the call consumes nothing from the generator.
    # _apply_drawn(imgs, draws): the transform of the batch ``imgs`` (N x H x W ...)
    #     given the per-image draws stacked along axis 0; returns a new array.


class RandomFlipHorizontal(Transform):
    """Reverse the image along W (axis 1) with probability ``p``.

    Draws ``np.random.rand()`` once per call; flips when the draw is ``< p``.

    >>> import numpy as np, needle as ndl
    >>> img = np.arange(6.0).reshape(2, 3, 1)
    >>> ndl.data.RandomFlipHorizontal(p=1.0)(img)[..., 0]
    array([[2., 1., 0.],
           [5., 4., 3.]])
    """

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: np.ndarray) -> np.ndarray:
        flip_img = self._draw() < self.p
        if flip_img:
            return img[:, ::-1, ...]
        return img

    def _draw(self, lead=()):
        if not lead:
            return np.random.rand()
        return np.random.rand(*lead)

    def _draw_key(self):
        return ("rand",)

    def _apply_drawn(self, imgs: np.ndarray, draws) -> np.ndarray:
        u = np.asarray(draws, dtype=np.float64)
        p = self.p
        if type(p) in (float, int, bool, np.float64):
            mask = u < p                   # the same float64 comparison as `rand() < p`
        else:                              # e.g. np.float32: compare as the scalar path does
            mask = np.array([v < p for v in u.tolist()], dtype=bool).reshape(u.shape)
        if imgs.ndim < 3:
            raise ValueError(f"RandomFlipHorizontal: expected a batch of H x W x C images, "
                             f"got shape {imgs.shape}")
        if mask.all():
            return imgs[:, :, ::-1, ...].copy()
        out = imgs.copy()
        which = np.flatnonzero(mask)
        if len(which):
            out[which] = imgs[which, :, ::-1, ...]
        return out

    def __repr__(self) -> str:
        return f"RandomFlipHorizontal(p={self.p})"


class RandomCrop(Transform):
    """Zero-pad H and W by ``padding`` and cut an H x W window at a random shift.

    Draws ``shift_x, shift_y = np.random.randint(low=-padding, high=padding + 1,
    size=2)`` once per call; ``shift_x`` moves the window along H, ``shift_y``
    along W. The output has the input's shape; pixels shifted in are 0.

    >>> import numpy as np, needle as ndl
    >>> img = np.ones((4, 4, 1))
    >>> out = ndl.data.RandomCrop(padding=2)(img)
    >>> out.shape, bool(out.sum() <= 16)   # same shape; zeros shifted in
    ((4, 4, 1), True)
    """

    def __init__(self, padding: int = 3):
        if padding < 0:
            raise ValueError(f"RandomCrop: padding must be >= 0, got {padding}")
        self.padding = padding

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if img.ndim < 2:
            raise ValueError(f"RandomCrop: expected an H x W x C image, got shape {img.shape}")
        shift_x, shift_y = self._draw()
        H, W = img.shape[0], img.shape[1]
        # Equal to padded[p+shift_x : p+shift_x+H, p+shift_y : p+shift_y+W] of the
        # zero-padded image (|shift| <= p): out[i, j] = img[i+shift_x, j+shift_y]
        # where that lies inside img, else 0. Copying the overlap is ~10x faster
        # than np.pad, and this runs once per sample.
        out = np.zeros_like(img)
        i0, i1 = max(0, -shift_x), min(H, H - shift_x)
        j0, j1 = max(0, -shift_y), min(W, W - shift_y)
        if i0 < i1 and j0 < j1:
            out[i0:i1, j0:j1, ...] = img[i0 + shift_x:i1 + shift_x, j0 + shift_y:j1 + shift_y, ...]
        return out

    def _draw(self, lead=()):
        p = self.padding
        return np.random.randint(low=-p, high=p + 1, size=tuple(lead) + (2,) if lead else 2)

    def _draw_key(self):
        p = self.padding
        return ("randint", -p, p + 1) if p != 0 else None

    def _apply_drawn(self, imgs: np.ndarray, draws) -> np.ndarray:
        if imgs.ndim < 3:
            raise ValueError(f"RandomCrop: expected a batch of H x W x C images, got shape "
                             f"{imgs.shape}")
        p = self.padding
        n, H, W = imgs.shape[:3]
        rest = imgs.shape[3:]
        shifts = np.asarray(draws, dtype=np.intp).reshape(n, 2)
        if p == 0:                       # every shift is 0
            return imgs.copy()
        # out[k, i, j] = padded[k, p + shift_x[k] + i, p + shift_y[k] + j]: one gather
        # of whole pixels (the trailing axes) from the flattened padded batch
        Hp, Wp = H + 2 * p, W + 2 * p
        padded = np.zeros((n, Hp, Wp) + rest, dtype=imgs.dtype)
        padded[:, p:p + H, p:p + W] = imgs
        grid = np.arange(H, dtype=np.intp)[:, None] * Wp + np.arange(W, dtype=np.intp)
        start = (np.arange(n, dtype=np.intp) * (Hp * Wp)
                 + (p + shifts[:, 0]) * Wp + (p + shifts[:, 1]))
        idx = (start[:, None, None] + grid).reshape(-1)
        pixel = int(np.prod(rest, dtype=np.intp))
        flat = padded.reshape(n * Hp * Wp) if pixel == 1 else padded.reshape(n * Hp * Wp, pixel)
        return flat.take(idx, axis=0).reshape(imgs.shape)

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding})"


_PROTOCOL = ("__call__", "_draw", "_draw_key", "_apply_drawn")


def _owner(cls: type, name: str) -> Optional[type]:
    for k in cls.__mro__:
        if name in k.__dict__:
            return k
    return None


def _batchable(t: Any) -> bool:
    """True when ``t`` defines the batched protocol in the class defining its ``__call__``.

    A subclass that overrides ``__call__`` (or only part of the protocol) is applied
    image by image, so its own code decides the draws.
    """
    if not isinstance(t, Transform):
        return False
    owners = {_owner(type(t), name) for name in _PROTOCOL}
    return len(owners) == 1 and None not in owners and Transform not in owners


def _draw_all(transforms: Sequence[Transform], n: int) -> List[Any]:
    """Per transform, its draws for ``n`` images stacked along axis 0, drawn in the
    per-image order (image-major, list order within an image)."""
    keys = [t._draw_key() for t in transforms]
    draws: List[Any] = [None] * len(transforms)
    active = [j for j, key in enumerate(keys) if key is not None]
    for j, key in enumerate(keys):
        if key is None:                      # consumes nothing: order is irrelevant
            draws[j] = transforms[j]._draw((n,))
    if not active:
        return draws
    if len({keys[j] for j in active}) == 1:
        # one call; C order of (n, k, ...) is image-major, list order within an image
        both = transforms[active[0]]._draw((n, len(active)))
        for c, j in enumerate(active):
            draws[j] = both[:, c]
        return draws
    cols: List[List[Any]] = [[] for _ in active]
    calls = [(cols[c].append, transforms[j]._draw) for c, j in enumerate(active)]
    for _ in range(n):
        for append, draw in calls:
            append(draw())
    for c, j in enumerate(active):
        draws[j] = np.array(cols[c])
    return draws


def apply_transforms_batch(transforms: Optional[Sequence], imgs) -> np.ndarray:
    """Apply ``transforms`` in list order to each image of ``imgs`` (N x H x W x C).

    Equals ``np.stack`` of the per-image results, image by image in index order
    (same draws from NumPy's global generator, same order, same values). Built-in
    transforms are applied to the whole batch; a list holding any other callable
    is applied image by image. Returns ``imgs`` itself when ``transforms`` is
    empty or the batch has no image (no draws then).
    """
    imgs = np.asarray(imgs)
    transforms = list(transforms) if transforms else []
    if not transforms or len(imgs) == 0:
        return imgs
    if not all(_batchable(t) for t in transforms):
        out = []
        for x in imgs:
            for t in transforms:
                x = t(x)
            out.append(np.asarray(x))
        return np.stack(out)
    for t, d in zip(transforms, _draw_all(transforms, len(imgs))):
        imgs = t._apply_drawn(imgs, d)
    return imgs
