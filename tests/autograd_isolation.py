"""Run a callable in a forked child so that a crash (a signal) is a test
failure rather than the end of the test session.

The child reports the outcome through a pipe: "ok", the name of the exception
type it raised, or nothing if it died; the parent turns a death into
"signal N" / "exit N". Fork is cheap here (needle is already imported), and the
callables only touch small tensors, so no worker thread is needed in the child.
"""
import os
import sys


def run_forked(fn, timeout=30.0):
    """Outcome of fn() in a child process: 'ok', an exception name, or 'signal N'."""
    import select
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            try:
                fn()
                msg = "ok"
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                msg = type(e).__name__ + ": " + str(e)[:300]
            os.write(w, msg.encode("utf-8", "replace"))
        finally:
            os.close(w)
            os._exit(code)
    os.close(w)
    chunks = []
    ready, _, _ = select.select([r], [], [], timeout)
    if ready:
        while True:
            b = os.read(r, 4096)
            if not b:
                break
            chunks.append(b)
    os.close(r)
    if not ready:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode("utf-8", "replace")
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}" + (" (timeout)" if not ready else "")
    if os.WEXITSTATUS(status) != 0:
        return f"exit {os.WEXITSTATUS(status)}"
    return out
