"""The examples in the public API's docstrings run and print what they say (doctest).

Covers needle, needle.nn, needle.optim, needle.data, needle.init and the tools (needle.tools,
needle.viz): every module of those packages is collected, and each docstring example is one
test.
"""
import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import needle

PACKAGES = ["needle", "needle.nn", "needle.optim", "needle.data", "needle.init",
            "needle.tools", "needle.viz"]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def modules():
    seen = []
    for name in PACKAGES:
        mod = importlib.import_module(name)
        seen.append(mod)
        if name == "needle":
            continue  # its own docstrings; the subpackages named above are walked
        for info in pkgutil.walk_packages(getattr(mod, "__path__", []), name + "."):
            seen.append(importlib.import_module(info.name))
    return list({m.__name__: m for m in seen}.values())


def examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    out = []
    for mod in modules():
        for test in finder.find(mod, mod.__name__):
            if test.examples and test.name.startswith(mod.__name__):
                out.append(pytest.param(test, id=test.name))
    return out


EXAMPLES = examples()


def test_every_package_has_examples():
    names = {p.values[0].name.split(".")[1] if "." in p.values[0].name else "needle"
             for p in EXAMPLES}
    for pkg in ("nn", "optim", "data", "init", "tools", "viz"):
        assert pkg in names, f"needle.{pkg} has no docstring example"


@pytest.mark.parametrize("test", EXAMPLES)
def test_docstring_example(test):
    np.random.seed(0)
    needle.set_printoptions(reset=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    test.globs = {"np": np, "ndl": needle, **test.globs}  # the docs' two usual imports
    report = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
