/* op_hook.c: the one hook the tools need in the engine (needle.detect_anomaly,
 * needle.profile): a Python callable told of every op's forward result and of
 * every node's gradients, with the seconds each took.
 *
 * Python view:
 *     needle._C._set_op_hook(fn)          # None clears it
 *     fn("forward", op, inputs, out, seconds, depth)    after op made out
 *     fn("backward", op, node, out_grad, grads, seconds) after node's gradients
 * depth counts the gradient rules running (an op computed inside a gradient
 * rule has depth > 0). A hook that raises fails the op or the backward. The
 * hook is off while it runs (ops it computes are not reported), and with no
 * hook set the engine pays one pointer test per op. Ops are reported where
 * they are computed eagerly (ndl_make_from_op); LAZY_MODE's deferred
 * realizations are not reported.
 */
#include <time.h>

#include "array_api.h"

static PyObject *hook; /* owned, or NULL */
static int in_hook, depth;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double ndl_hook_start(void)
{
    return hook != NULL && !in_hook ? now() : -1.0;
}

static int call_hook(PyObject *args)
{
    PyObject *r = NULL, *fn = hook ? Py_NewRef(hook) : NULL;
    int rc = 0;
    if (args == NULL)
        return -1;
    if (fn != NULL) {
        in_hook = 1;
        r = PyObject_Call(fn, args, NULL);
        in_hook = 0;
        rc = r == NULL ? -1 : 0;
    }
    Py_XDECREF(r);
    Py_XDECREF(fn);
    Py_DECREF(args);
    return rc;
}

int ndl_hook_forward(PyObject *op, PyObject *inputs, PyObject *out, double t0)
{
    if (t0 < 0)
        return 0;
    return call_hook(Py_BuildValue("(sOOOdi)", "forward", op, inputs, out, now() - t0, depth));
}

double ndl_hook_enter_backward(void)
{
    double t0 = ndl_hook_start();
    if (t0 >= 0)
        depth++;
    return t0;
}

int ndl_hook_backward(double t0, ValueObject *node, PyObject *g, Py_ssize_t n,
                      PyObject *const *grads)
{
    PyObject *t;
    double dt;
    if (t0 < 0)
        return 0;
    dt = now() - t0;
    depth--;
    if (hook == NULL || node == NULL) /* no hook, or the rule failed */
        return 0;
    t = PyTuple_New(n);
    if (t == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, Py_NewRef(grads[i] ? grads[i] : Py_None));
    /* "N" hands t over to the argument tuple (freed with it on failure too). */
    return call_hook(Py_BuildValue("(sOOONd)", "backward", node->op, (PyObject *)node, g, t, dt));
}

PyObject *ndl_py_set_op_hook(PyObject *m, PyObject *fn)
{
    if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "_set_op_hook: %R is not callable", fn);
        return NULL;
    }
    Py_XSETREF(hook, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}
