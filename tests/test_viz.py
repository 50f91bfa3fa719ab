"""needle.viz.graph: DOT of the autograd graph, rendering and collapsing of repeated layers."""
import re
import shutil
import sys

import pytest

import needle as ndl
from needle import viz


def parse(dot):
    """{node id: label} and the list of (source label, target label) edges."""
    labels = dict(re.findall(r'^\s*(n\d+) \[label="([^"]*)"', dot, re.M))
    edges = [(labels[a], labels[b]) for a, b in viz._edges_of(dot)]
    return labels, edges


def test_small_graph_has_exactly_the_expected_nodes_and_edges():
    a = ndl.Tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    b = ndl.Tensor([[4.0, 5.0, 6.0]], requires_grad=False)
    out = (a * b + a).sum()
    labels, edges = parse(viz.graph(out))
    A = r"(1, 3)\nfloat32\nrequires_grad"
    B = r"(1, 3)\nfloat32"
    MUL = r"EWiseMul\n(1, 3) float32\nsaved 12 B"
    ADD = r"EWiseAdd\n(1, 3) float32\nsaved 12 B"
    SUM = r"Summation\n() float32\nsaved 4 B"
    assert sorted(labels.values()) == sorted([A, B, MUL, ADD, SUM])
    assert sorted(edges) == sorted([(A, MUL), (B, MUL), (MUL, ADD), (A, ADD), (ADD, SUM)])


def test_graph_marks_requires_grad_and_the_output():
    a = ndl.Tensor([1.0], requires_grad=True)
    c = ndl.Tensor([2.0], requires_grad=False)
    dot = viz.graph(a * c)
    assert re.search(r'n\d+ \[label="\(1,\)\\nfloat32\\nrequires_grad", [^]]*#cfe2ff', dot)
    assert re.search(r'n\d+ \[label="\(1,\)\\nfloat32", [^]]*#eeeeee', dot)
    assert re.search(r'label="EWiseMul[^]]*peripheries=2', dot)


def test_a_leaf_alone_and_a_list_of_roots():
    a = ndl.Tensor([1.0], requires_grad=True)
    assert viz.graph(a).nodes == 1 and viz.graph(a).edges == 0
    g = viz.graph([a + 1, a * 2])
    assert (g.nodes, g.edges) == (3, 2)


def test_rejects_non_tensors():
    with pytest.raises(TypeError, match="viz.graph expects Tensors, got int"):
        viz.graph(3)


def mlp_graph(depth, width=8):
    layers = []
    for _ in range(depth):
        layers += [ndl.nn.Linear(width, width), ndl.nn.ReLU()]
    model = ndl.nn.Sequential(*layers)
    # a 3-d input: Linear's two nodes x @ W and + b (on 2-d input it is one fused node)
    return model(ndl.init.randn(1, 2, width)).sum()


def test_ten_thousand_nodes_collapse_to_one_drawn_layer():
    out = mlp_graph(1700)  # 6 nodes per layer: 10,202 nodes
    g = viz.graph(out)
    assert g.total_nodes > 10_000
    assert g.nodes == 8  # input, one layer of 6, the sum
    assert 'label="x 1700 (a block of 6 nodes, repeated)"' in g
    labels, edges = parse(g)
    relu = [n for n, s in labels.items() if s.startswith("ReLU")]
    matmul = [n for n, s in labels.items() if s.startswith("MatMul")]
    assert f"{relu[0]} -> {matmul[0]} [style=dashed];" in g  # one layer feeds the next


def test_without_collapse_the_nearest_nodes_are_drawn():
    out = mlp_graph(50)
    g = viz.graph(out, max_nodes=20, collapse=False)
    assert g.nodes == 20 and "earlier nodes not drawn" in g
    assert viz.graph(out, max_nodes=10_000).nodes == g.total_nodes


def test_svg_when_graphviz_and_dot_are_installed():
    pytest.importorskip("graphviz", reason="the graphviz package is not installed")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed (make test installs it)")
    svg = viz.graph((ndl.Tensor([1.0], requires_grad=True) * 2).sum())._repr_svg_()
    assert svg.lstrip().startswith("<?xml") and "MulScalar" in svg


def test_clear_message_without_the_graphviz_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # import fails
    g = viz.graph(ndl.Tensor([1.0], requires_grad=True) * 2)
    with pytest.raises(RuntimeError, match=r"needs the Python package 'graphviz'"):
        g.svg()
    assert "pip install graphviz" in g._repr_svg_()
    assert g.startswith("digraph needle {")  # the DOT text needs neither


def test_clear_message_without_dot(monkeypatch):
    pytest.importorskip("graphviz", reason="the graphviz package is not installed")
    monkeypatch.setenv("PATH", "/nonexistent")
    g = viz.graph(ndl.Tensor([1.0], requires_grad=True) * 2)
    with pytest.raises(RuntimeError, match=r"'dot' program is not on PATH"):
        g.svg()
    assert "apt-get install graphviz" in g._repr_svg_()


def test_views_are_marked_and_held_bytes_count_each_buffer_once():
    x = ndl.Tensor([[1.0, 2.0]], requires_grad=True)
    b = x.broadcast_to((3, 2))           # a stride-0 view of x's buffer: no bytes of its own
    out = (b * 2.0 + b).sum()            # MulScalar (3, 2), EWiseAdd (3, 2), Summation ()
    labels, _ = parse(viz.graph(out))
    assert r"BroadcastTo\n(3, 2) float32\na view, no copy" in labels.values()
    assert 'label="5 nodes; op outputs hold 52 B"' in viz.graph(out)  # 24 + 24 + 4
