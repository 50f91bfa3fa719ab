/* repr_hook.c: the Python hooks behind repr() and _repr_html_ of NDArray and
 * Tensor (needle/tools.py installs them; the C core knows nothing of styles).
 *
 * Python view:
 *     needle._C._set_repr_hook(kind, fn)   # kind "repr" or "html"; fn None clears it
 *     # repr(x) is fn(x, "repr") when a repr hook is set and fn returns a str,
 *     # the course's repr otherwise; x._repr_html_() is fn(x, "html") or None.
 * The course's repr stays the default: with no hook set nothing here runs.
 */
#include <string.h>

#include "ndarray.h"

static PyObject *hooks[2]; /* owned: [0] repr, [1] html */

static int hook_index(const char *kind)
{
    if (strcmp(kind, "repr") == 0)
        return 0;
    if (strcmp(kind, "html") == 0)
        return 1;
    PyErr_Format(PyExc_ValueError, "repr hook kind must be 'repr' or 'html', got '%s'", kind);
    return -1;
}

PyObject *ndl_py_set_repr_hook(PyObject *m, PyObject *args)
{
    const char *kind;
    PyObject *fn;
    int i;
    if (!PyArg_ParseTuple(args, "sO:_set_repr_hook", &kind, &fn))
        return NULL;
    if ((i = hook_index(kind)) < 0)
        return NULL;
    if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "_set_repr_hook: %R is not callable", fn);
        return NULL;
    }
    Py_XSETREF(hooks[i], fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

PyObject *ndl_repr_via_hook(PyObject *obj, const char *kind)
{
    int i = hook_index(kind);
    if (i < 0)
        return NULL;
    if (hooks[i] == NULL)
        Py_RETURN_NONE;
    return PyObject_CallFunction(hooks[i], "Os", obj, kind);
}

PyObject *ndl_py_repr_html(PyObject *self, PyObject *unused)
{
    return ndl_repr_via_hook(self, "html");
}
