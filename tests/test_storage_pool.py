"""The CPU allocator's size-class free list (Note [Size-class free list], storage.c).

A freed buffer is given to the next array of its size class (same address)
while the cache stays within its bounds (some tests hold a big untouched
ballast array for that); buffers stay correct (no stale data
shows through an op's result); the cache is bounded by NEEDLE_CPU_CACHE_MB
(checked on the resident set size in a child process) and turned off by 0,
and never raises the peak; a step after the first takes no page faults for
its big buffers; big buffers the cache does not keep leave the resident set
(Note [Big buffers from mmap]). AddressSanitizer builds turn the cache off.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from needle import backend_ndarray as nd
from needle.backend_ndarray import ndarray_backend_cpu as cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASAN = bool(os.environ.get("NEEDLE_ASAN_RUN"))


@pytest.fixture
def ballast():
    """256 MB of live, never touched (so not resident) buffer: room for the cache."""
    big = cpu.Array(64 << 20)
    yield big
    del big


@pytest.mark.skipif(ASAN, reason="the free list is off under AddressSanitizer")
@pytest.mark.parametrize("n, m", [(1000, 1000), (1000, 1010), ((3 << 20) - 8192, (3 << 20) - 4096)])
def test_a_freed_buffer_serves_the_next_array_of_its_class(n, m, ballast):
    a = cpu.Array(n)
    ptr = a.ptr()
    del a
    b = cpu.Array(m)
    assert b.ptr() == ptr


@pytest.mark.skipif(ASAN, reason="the free list is off under AddressSanitizer")
def test_a_different_class_gets_another_buffer():
    # In a fresh process: earlier tests may have filled the cache, and a buffer
    # it cannot keep goes back to malloc, which may then give it to any size.
    child = textwrap.dedent(r'''
        import sys
        sys.path.insert(0, sys.argv[1])
        from needle.backend_ndarray import ndarray_backend_cpu as cpu
        ballast = cpu.Array(64 << 20)
        a = cpu.Array(1000)
        ptr = a.ptr()
        del a
        b = cpu.Array(2000)  # 8000 bytes: another class than 4000
        c = cpu.Array(1000)  # the cached buffer, still on its class's list
        print(int(b.ptr() != ptr), int(c.ptr() == ptr))
    ''')
    out = subprocess.run([sys.executable, "-c", child, ROOT], capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["1", "1"], out.stdout


def test_reused_buffers_give_correct_results():
    rng = np.random.RandomState(0)
    for _ in range(50):
        xn = rng.randn(37, 53).astype(np.float32)
        yn = rng.randn(53, 19).astype(np.float32)
        x, y = nd.array(xn), nd.array(yn)
        np.testing.assert_allclose((x @ y).numpy(), xn @ yn, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal((x + 1.0).numpy(), xn + np.float32(1.0))
        del x, y


RSS_CHILD = textwrap.dedent(r'''
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from needle import backend_ndarray as nd
    from needle.backend_ndarray import ndarray_backend_cpu as cpu
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    ballast = cpu.Array(256 << 20)  # 1 GB live, untouched: only NEEDLE_CPU_CACHE_MB limits
    base = rss()
    # 40 buffers of different classes, 2-5 MB each, written, then all freed
    arrays = [nd.array([float(i)]).broadcast_to((int((1.5 + i / 16) * 2 ** 18),)).compact()
              for i in range(40)]
    del arrays
    print(rss() - base)
''')


@pytest.mark.skipif(ASAN, reason="AddressSanitizer keeps freed memory in its quarantine")
@pytest.mark.parametrize("limit_mb", [0, 16])
def test_the_cache_is_bounded(limit_mb):
    env = dict(os.environ, NEEDLE_CPU_CACHE_MB=str(limit_mb))
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, ROOT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    kept_mb = float(out.stdout.split()[-1])
    # about 130 MB were allocated and freed; at most the limit stays (plus a little slack)
    assert kept_mb < limit_mb + 8, kept_mb


FAULTS_CHILD = textwrap.dedent(r'''
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    from needle import backend_ndarray as nd
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    one = nd.array([1.0])
    sizes = [3 << 18, 3 << 19, 5 << 19, 5 << 20]  # 3, 6, 10 and 20 MB of float32
    def step():
        # a training step's shape: big buffers made, used, and all freed at its end
        arrays = [one.broadcast_to((n,)).compact() for n in sizes]
        arrays.append(arrays[-1] + 1.0)
        del arrays
    step(); step()
    f0 = faults()
    step()
    print(faults() - f0, sum(sizes) * 4 // 4096)
''')


@pytest.mark.skipif(ASAN, reason="the free list is off under AddressSanitizer")
def test_a_step_after_the_first_takes_its_big_buffers_from_the_cache():
    """Note [Size-class free list]: what a step frees at its end (when few
    buffers are live) stays cached, up to the peak, for the next step: no
    page faults (a cache bounded by the live bytes kept almost nothing)."""
    out = subprocess.run([sys.executable, "-c", FAULTS_CHILD, ROOT], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    faults, pages = map(int, out.stdout.split())
    assert faults < pages // 20, (faults, pages)


PEAK_CHILD = textwrap.dedent(r'''
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from needle import backend_ndarray as nd
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    one = nd.array([1.0])
    base = rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    a = one.broadcast_to((8 << 20,)).compact()  # 32 MB, written
    del a                                       # cached: live + cached <= peak
    b = one.broadcast_to((12 << 20,)).compact()  # 48 MB, another class
    print(hwm() - base)
''')


@pytest.mark.skipif(ASAN, reason="the free list is off under AddressSanitizer")
def test_the_cache_never_raises_the_peak():
    """Note [Size-class free list]: for big buffers, live + cached <= the peak
    of the live buffers + 8 MB; a new buffer past it first frees cached ones
    of other classes."""
    env = dict(os.environ, NEEDLE_CPU_CACHE_MB="1024")
    out = subprocess.run([sys.executable, "-c", PEAK_CHILD, ROOT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    peak_mb = float(out.stdout.split()[-1])
    assert peak_mb < 48 + 8, peak_mb  # 80 if the 32 MB stayed cached


UNMAP_CHILD = textwrap.dedent(r'''
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from needle import backend_ndarray as nd
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    one = nd.array([1.0])
    base = rss()
    pins = []
    for _ in range(3):
        # 40 buffers of 1.5-2 MB, written; a 256 KB buffer made after them and
        # kept (it pins the top of malloc's heap, were they in it); all freed
        arrays = [one.broadcast_to(((3 << 17) + 4096 * i,)).compact() for i in range(40)]
        pins.append(one.broadcast_to((1 << 16,)).compact())
        del arrays
    print(rss() - base)
''')


@pytest.mark.skipif(ASAN, reason="AddressSanitizer keeps freed memory in its quarantine")
def test_big_buffers_go_back_to_the_system():
    """Note [Big buffers from mmap]: a freed buffer of 1 MB or more that the
    cache does not keep leaves the resident set (malloc's heap kept them once
    its mmap threshold had risen: 75 MB here)."""
    env = dict(os.environ, NEEDLE_CPU_CACHE_MB="0")
    out = subprocess.run([sys.executable, "-c", UNMAP_CHILD, ROOT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    kept_mb = float(out.stdout.split()[-1])
    assert kept_mb < 8, kept_mb


REMAP_CHILD = textwrap.dedent(r'''
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from needle.backend_ndarray import ndarray_backend_cpu as cpu
    a = cpu.Array(3 << 20)  # 12 MB: the peak
    np.frombuffer(memoryview(a), dtype=np.float32)[:] = 7.0
    del a  # cached
    b = cpu.Array(5 << 19)  # 10 MB: 10 live + 12 cached > the peak + 8 MB
    print(np.frombuffer(memoryview(b), dtype=np.float32)[1024:].max())
''')


@pytest.mark.skipif(ASAN, reason="the free list is off under AddressSanitizer")
def test_a_miss_at_the_ceiling_reuses_a_bigger_cached_buffer():
    """Note [Remapping a cached buffer]: the new buffer is the cached one's
    pages (its old contents show: a fresh mapping reads zeros)."""
    out = subprocess.run([sys.executable, "-c", REMAP_CHILD, ROOT], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) == 7.0


STEADY_CHILD = textwrap.dedent(r'''
    import os, resource, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import needle as ndl
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    rng = np.random.default_rng(0)
    # 4 MB and 1.2 MB parameters: mapped buffers (Note [Big buffers from mmap])
    model = ndl.nn.Sequential(ndl.nn.Linear(1024, 1024), ndl.nn.ReLU(), ndl.nn.Linear(1024, 300))
    opt = getattr(ndl.optim, sys.argv[2])(model.parameters(), lr=1e-3)
    x = ndl.Tensor(rng.standard_normal((64, 1024)).astype("float32"), requires_grad=False)
    y = ndl.Tensor(rng.integers(0, 300, 64).astype("float32"), requires_grad=False)
    def train():
        opt.reset_grad()
        ndl.nn.SoftmaxLoss()(model(x), y).backward(create_graph=False)
        opt.step()
    def infer():
        with ndl.no_grad():
            model(x).numpy()
    for fn in (train, infer):
        fn(); fn()
        r0, f0 = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            fn()
        print(rss() - r0, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
''')


@pytest.mark.skipif(ASAN, reason="the free list is off under AddressSanitizer")
@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_steps_after_the_first_map_nothing_new(optimizer):
    """Issue 14: an optimizer step, a training step and a no-grad forward
    over mapped (1 MB and more) buffers give back what they take: the resident
    set stays flat over 20 more of them and they take (almost) no page faults
    (the new parameter and state buffers come from the free list)."""
    out = subprocess.run([sys.executable, "-c", STEADY_CHILD, ROOT, optimizer],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.strip().splitlines():
        grew_mb, faults = map(float, line.split())
        assert grew_mb < 1.0 and faults < 50, (grew_mb, faults)
