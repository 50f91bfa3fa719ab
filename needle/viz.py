"""See the autograd graph: ``needle.viz.graph(tensor)`` gives Graphviz DOT text.

Every Value reachable from the tensor is one node: a leaf shows its shape and dtype (filled
blue when it requires grad), an op node its op, shape, dtype and the bytes its saved output
holds (or that it is a view of an input's buffer); an edge runs from each input to its
user. In a notebook the result draws itself as SVG (``_repr_svg_``) when the ``graphviz``
package and its ``dot`` program are installed, and says what is missing when they are not.
Graphs longer than ``max_nodes`` have their repeated blocks (repeated layers) drawn once, in
a box marked with the repeat count.

>>> import needle as ndl
>>> x = ndl.Tensor([1.0, 2.0], requires_grad=True)
>>> dot = ndl.viz.graph((x * x).sum())
>>> print(dot.splitlines()[0])
digraph needle {
>>> dot.count(" -> ")
3
"""
from __future__ import annotations

import html
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import _C
from .autograd import find_topo_sort

__all__ = ["graph", "DotGraph"]


class DotGraph(str):
    """DOT text (a ``str``) that renders itself in notebooks.

    ``nodes`` and ``edges`` count what was drawn; ``total_nodes`` what the graph has."""

    nodes: int = 0
    edges: int = 0
    total_nodes: int = 0

    def svg(self) -> str:
        """The graph as SVG text; ``RuntimeError`` saying what to install when it cannot."""
        try:
            import graphviz
        except ImportError:
            raise RuntimeError(
                "needle.viz: drawing the graph needs the Python package 'graphviz' "
                "(pip install graphviz) and Graphviz's 'dot' program (apt-get install "
                "graphviz); print() the graph to see its DOT text") from None
        try:
            return graphviz.Source(str(self)).pipe(format="svg").decode()
        except graphviz.ExecutableNotFound:
            raise RuntimeError(
                "needle.viz: the Python package 'graphviz' is installed but Graphviz's 'dot' "
                "program is not on PATH (apt-get install graphviz); print() the graph to see "
                "its DOT text") from None

    def _repr_svg_(self) -> str:
        try:
            return self.svg()
        except RuntimeError as e:
            return _message_svg(str(e))


def _message_svg(msg: str) -> str:
    lines = [msg[i:i + 90] for i in range(0, len(msg), 90)]
    texts = "".join(f'<text x="8" y="{20 + 18 * k}" font-family="monospace" font-size="13">'
                    f"{html.escape(t)}</text>" for k, t in enumerate(lines))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="780" '
            f'height="{18 * len(lines) + 14}">{texts}</svg>')


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _itemsize(dtype: Any) -> int:
    return 8 if str(dtype) in ("float64", "int64") else 4


def _info(v: Any) -> Tuple[str, str, int]:
    """(shape text, dtype, bytes of its elements) of a Value's data."""
    d = v.cached_data
    if d is None:
        return "?", "?", 0
    if isinstance(d, tuple):
        shapes = [tuple(getattr(e, "shape", ())) for e in d]
        nbytes = sum(int(e.size) * _itemsize(e.dtype) for e in d)
        dt = str(d[0].dtype) if d else "?"
        return "tuple" + str(shapes), dt, nbytes
    dt = str(d.dtype)
    return str(tuple(d.shape)), dt, int(d.size) * _itemsize(dt)


def _storages(v: Any) -> Dict[int, int]:
    """{buffer address: bytes} of the buffers a Value's data lives in (views share them)."""
    d = v.cached_data
    out: Dict[int, int] = {}
    for e in (d if isinstance(d, tuple) else (d,)):
        if e is None:
            continue
        h = getattr(e, "_handle", None)
        if h is not None:
            out[h.ptr()] = int(h.size) * _itemsize(e.dtype)
            continue
        root = e
        while getattr(root, "base", None) is not None and hasattr(root.base, "nbytes"):
            root = root.base
        if hasattr(root, "__array_interface__"):
            out[root.__array_interface__["data"][0]] = int(root.nbytes)
    return out


def _is_view(v: Any) -> bool:
    """True when the op's output shares a buffer with one of its inputs (no copy made)."""
    mine = _storages(v)
    return any(k in mine for x in v.inputs for k in _storages(x))


def _label_key(v: Any) -> Tuple[Any, ...]:
    shape, dt, _ = _info(v)
    return (type(v.op).__name__ if v.op is not None else "leaf", shape, dt,
            bool(v.requires_grad), len(v.inputs))


def _find_runs(keys: List[int], max_period: int, min_cover: int) -> List[Tuple[int, int, int]]:
    """Runs (start, period, repeats) of a block of keys repeated back to back, greedily from
    the start, each the longest cover found at its start."""
    n, i, runs = len(keys), 0, []
    while i < n:
        best: Optional[Tuple[int, int]] = None
        for p in range(1, min(max_period, (n - i) // 2) + 1):
            if keys[i + p] != keys[i]:
                continue
            block, r = keys[i:i + p], 1
            while i + (r + 1) * p <= n and keys[i + r * p:i + (r + 1) * p] == block:
                r += 1
            if r >= 2 and p * r >= min_cover and (best is None or p * r > best[0] * best[1]):
                best = (p, r)
        if best is None:
            i += 1
        else:
            runs.append((i, best[0], best[1]))
            i += best[0] * best[1]
    return runs


def graph(tensor: Any, max_nodes: int = 200, collapse: bool = True,
          max_period: int = 64) -> DotGraph:
    """The autograd graph of ``tensor`` (a Tensor or TensorTuple, or a list of them) as DOT.

    When the graph has more than ``max_nodes`` nodes and ``collapse`` is on, repeated blocks
    of up to ``max_period`` nodes are drawn once (a box says how many times they repeat;
    dashed edges lead from one repetition to the next); if it is still too big, only the
    ``max_nodes`` nodes nearest the output are drawn.

    >>> import needle as ndl
    >>> x = ndl.Tensor([[1.0, 2.0]], requires_grad=True)
    >>> h = x
    >>> for _ in range(500):
    ...     h = (h * 0.5).relu()
    >>> g = ndl.viz.graph(h, max_nodes=50)
    >>> g.total_nodes, g.nodes
    (1001, 3)
    """
    roots = list(tensor) if isinstance(tensor, (list, tuple)) else [tensor]
    for r in roots:
        if not isinstance(r, _C.Value):
            raise TypeError(f"viz.graph expects Tensors, got {type(r).__name__}")
    order = find_topo_sort(roots)
    n = len(order)
    index = {id(v): k for k, v in enumerate(order)}
    rep = list(range(n))              # node -> the node drawn for it
    run_of: Dict[int, Tuple[int, int, int, int]] = {}  # node -> (run, start, period, repeat#)
    runs: List[Tuple[int, int, int]] = []
    if collapse and n > max_nodes:
        ids: Dict[Tuple[Any, ...], int] = {}
        keys = [ids.setdefault(_label_key(v), len(ids)) for v in order]
        runs = _find_runs(keys, max_period, min_cover=4)
        for ri, (s, p, r) in enumerate(runs):
            for k in range(s, s + p * r):
                j, off = divmod(k - s, p)
                rep[k] = s + off
                run_of[k] = (ri, s, p, j)
    drawn = sorted(set(rep))
    dropped = 0
    if len(drawn) > max_nodes:
        dropped = len(drawn) - max_nodes
        drawn = drawn[dropped:]
    keep = set(drawn)
    root_ids = {id(r) for r in roots}

    lines = ["digraph needle {", '  rankdir=BT; node [fontname="Helvetica", fontsize=10];']
    cluster_members: Dict[int, List[int]] = {}
    node_lines: Dict[int, str] = {}
    for k in drawn:
        v = order[k]
        shape, dt, nbytes = _info(v)
        if v.op is None:
            label = f"{shape}\\n{dt}" + ("\\nrequires_grad" if v.requires_grad else "")
            attrs = 'shape=ellipse, style=filled, fillcolor="#cfe2ff"' if v.requires_grad \
                else 'shape=ellipse, style=filled, fillcolor="#eeeeee"'
        else:
            held = "a view, no copy" if _is_view(v) else f"saved {_fmt_bytes(nbytes)}"
            label = f"{type(v.op).__name__}\\n{shape} {dt}\\n{held}"
            attrs = "shape=box"
            if v.requires_grad:
                attrs += ', color="#1f5fbf"'
        if id(v) in root_ids:
            attrs += ", peripheries=2"
        node_lines[k] = f'  n{k} [label="{label}", {attrs}];'
        if k in run_of:
            cluster_members.setdefault(run_of[k][0], []).append(k)
    for k in drawn:
        if k not in run_of:
            lines.append(node_lines[k])
    for ri, members in cluster_members.items():
        s, p, r = runs[ri]
        lines.append(f"  subgraph cluster_{ri} {{")
        lines.append(f'    label="x {r} (a block of {p} nodes, repeated)"; style=dashed;')
        lines.extend("  " + node_lines[k] for k in members)
        lines.append("  }")
    if dropped:
        lines.append(f'  more [label="... {dropped} earlier nodes not drawn", shape=note];')

    edges = set()
    for k, v in enumerate(order):
        for x in v.inputs:
            u = index.get(id(x))
            if u is None:
                continue
            mu, mv = rep[u], rep[k]
            dashed = u in run_of and k in run_of and run_of[u][0] == run_of[k][0] \
                and run_of[u][3] != run_of[k][3]
            if mv not in keep:
                continue
            src = f"n{mu}" if mu in keep else "more"
            edge = (src, f"n{mv}", dashed)
            if edge in edges and (runs or dropped):
                continue  # collapsed: one edge stands for its repetitions
            edges.add(edge)
            lines.append(f"  {src} -> n{mv}" + (" [style=dashed];" if dashed else ";"))
    held: Dict[int, int] = {}  # the buffers op outputs keep alive, each counted once
    leaves: Dict[int, int] = {}
    for v in order:
        (held if v.op is not None else leaves).update(_storages(v))
    saved = sum(b for k, b in held.items() if k not in leaves)
    lines.append(f'  label="{n} nodes; op outputs hold {_fmt_bytes(saved)}";')
    lines.append("}")
    out = DotGraph("\n".join(lines) + "\n")
    out.nodes = len(drawn)
    out.edges = sum(1 for ln in lines if " -> " in ln)
    out.total_nodes = n
    return out


def _edges_of(dot: str) -> List[Tuple[str, str]]:
    """The (source, target) pairs of DOT text made by ``graph`` (for tests and notebooks)."""
    out = []
    for ln in dot.splitlines():
        if " -> " in ln:
            a, b = ln.strip().rstrip(";").split(" [")[0].split(" -> ")
            out.append((a.strip(), b.strip()))
    return out

