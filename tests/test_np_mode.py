"""np mode (API.md 1.3, items 10.27): autograd_np_cases.py is run once in a
child process with NEEDLE_BACKEND=np set before `import needle` (one process
runs in one mode); each test here reports the results of one test function
of that file, read from the child's JUnit XML.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the test functions of autograd_np_cases.py and the least number of cases each must run
FUNCTIONS = {
    "test_backend_is_numpy": 1,
    "test_op_vs_numpy_and_torch": 200,
    "test_op_gradient_finite_differences": 180,
    "test_cached_data_are_numpy_arrays": 1,
    "test_float64_stays_float64_and_float32_stays_float32": 1,
    "test_integer_tensor_and_integer_seed": 1,
    "test_numpy_returns_a_copy": 1,
    "test_repr": 1,
    "test_detach_and_data_share_numpy_memory": 1,
    "test_tensor_of_numpy_copies": 1,
    "test_topo_sort_course_example": 1,
    "test_second_derivative_and_no_graph_backward": 1,
    "test_no_grad": 1,
    "test_python_op_gets_numpy_arrays": 1,
    "test_lazy_mode": 1,
    "test_implicit_broadcasting_follows_numpy": 1,
    "test_course_gradient_check": 38,
}


@pytest.fixture(scope="module")
def np_run(tmp_path_factory):
    xml = tmp_path_factory.mktemp("np_mode") / "results.xml"
    env = dict(os.environ, NEEDLE_BACKEND="np")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={xml}", os.path.join("tests", "autograd_np_cases.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    results = {}
    if xml.exists():
        for tc in ET.parse(xml).getroot().iter("testcase"):
            name = tc.get("name")
            bad = [c for c in tc if c.tag in ("failure", "error")]
            skipped = [c for c in tc if c.tag == "skipped"]
            status = "failed" if bad else ("skipped" if skipped else "passed")
            detail = "\n".join((c.get("message") or "") + "\n" + (c.text or "")[-1500:]
                               for c in bad)
            results[name] = (status, detail)
    return r, results


def test_child_process_ran(np_run):
    r, results = np_run
    assert results, f"no results (exit {r.returncode})\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert r.returncode in (0, 1), f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    listed = {n.split("[")[0] for n in results}
    assert listed <= set(FUNCTIONS), listed - set(FUNCTIONS)


@pytest.mark.parametrize("func", sorted(FUNCTIONS))
def test_np_mode(np_run, func):
    r, results = np_run
    mine = {n: v for n, v in results.items() if n.split("[")[0] == func}
    assert len(mine) >= FUNCTIONS[func], \
        f"{len(mine)} cases ran\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    failed = {n: d for n, (s, d) in mine.items() if s != "passed"}
    if failed:
        first = next(iter(failed))
        pytest.fail(f"{len(failed)}/{len(mine)} failed in np mode, e.g. {first}:\n"
                    f"{failed[first]}\nall: {sorted(failed)[:40]}")
