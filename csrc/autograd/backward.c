/* backward.c: topological order and reverse-mode differentiation (API.md 3.7).
 *
 * Python equivalent:
 *     def find_topo_sort(node_list):       # post-order DFS over inputs, by identity
 *         visited, order = set(), []
 *         for node in node_list: topo_sort_dfs(node, visited, order)
 *         return order
 *     def compute_gradient_of_variables(output_tensor, out_grad):
 *         grads = {output_tensor: [out_grad]}
 *         for node in reversed(find_topo_sort([output_tensor])):
 *             node.grad = sum_node_list(grads[node])  # summed on arrival
 *             if node.op is not None:
 *                 for x, g in zip(node.inputs, node.op.gradient_as_tuple(node.grad, node)):
 *                     grads.setdefault(x, []).append(g)
 * The DFS uses an explicit stack (no recursion on graph depth) and marks
 * nodes with an epoch number instead of a set. Partial adjoints live on the
 * node (ValueObject.partials, their running sum: Note [Summing partials on
 * arrival]) for the walk and are always cleared after it.
 * Only inputs that require grad receive partials: a constant's gradient is
 * never computed.
 *
 * Note [Freeing the graph]: with NDL_GRAD_FREE_GRAPH (backward with
 * retain_graph False, the default of create_graph=False), a node's inputs
 * are replaced by an empty tuple as soon as its gradients are computed, and
 * the walk drops its own reference to the node, so the activations that only
 * the graph held are freed during backward instead of when the loss tensor
 * is next rebound (PyTorch frees its saved tensors the same way). The node
 * keeps its op and data; a later backward through it raises RuntimeError.
 * Unrealized nodes (LAZY_MODE) keep their inputs: their data needs them.
 */
#include "array_api.h"

static uint64_t epoch;

/* Note [Grad-ready hook]: distributed data parallel overlaps its gradient
 * all-reduce with the rest of the walk. A leaf's partials are all summed when
 * the walk reaches it (every user comes before it in reverse topological
 * order), so its .grad is final there: the hook, if set, is called as
 * hook(leaf) at that moment and as hook(None) when the walk has finished. An
 * exception from the hook ends the walk with that exception. */
static PyObject *grad_ready_hook;

static int call_grad_ready_hook(PyObject *arg)
{
    PyObject *hook, *r;
    if (grad_ready_hook == NULL)
        return 0;
    hook = Py_NewRef(grad_ready_hook); /* the hook may unset itself */
    r = PyObject_CallOneArg(hook, arg);
    Py_DECREF(hook);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

typedef struct {
    ValueObject *node;
    Py_ssize_t next; /* next input to visit */
} frame;

PyObject *ndl_find_topo_sort(PyObject *node_list)
{
    PyObject *order = NULL, *seq = NULL;
    frame *stack = NULL;
    Py_ssize_t cap = 64, top = 0;
    uint64_t mark = ++epoch;
    seq = PySequence_Fast(node_list, "find_topo_sort expects a list of Values");
    if (seq == NULL)
        return NULL;
    order = PyList_New(0);
    stack = PyMem_Malloc(sizeof(frame) * (size_t)cap);
    if (order == NULL || stack == NULL) {
        if (stack == NULL)
            PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t r = 0; r < PySequence_Fast_GET_SIZE(seq); r++) {
        PyObject *root = PySequence_Fast_GET_ITEM(seq, r);
        if (!Value_Check(root) || ((ValueObject *)root)->visit_mark == mark)
            continue;
        ((ValueObject *)root)->visit_mark = mark;
        stack[top++] = (frame){(ValueObject *)root, 0};
        while (top > 0) {
            frame *f = &stack[top - 1];
            PyObject *inputs = f->node->inputs;
            if (inputs != NULL && f->next < PyTuple_GET_SIZE(inputs)) {
                PyObject *child = PyTuple_GET_ITEM(inputs, f->next++);
                if (!Value_Check(child) || ((ValueObject *)child)->visit_mark == mark)
                    continue;
                ((ValueObject *)child)->visit_mark = mark;
                if (top == cap) {
                    frame *bigger = PyMem_Realloc(stack, sizeof(frame) * (size_t)(cap *= 2));
                    if (bigger == NULL) {
                        PyErr_NoMemory();
                        goto fail;
                    }
                    stack = bigger;
                }
                stack[top++] = (frame){(ValueObject *)child, 0};
            } else {
                if (PyList_Append(order, (PyObject *)f->node) < 0)
                    goto fail;
                top--;
            }
        }
    }
    PyMem_Free(stack);
    Py_DECREF(seq);
    return order;
fail:
    PyMem_Free(stack);
    Py_XDECREF(order);
    Py_DECREF(seq);
    return NULL;
}

/* acc + x, a new reference (the `+` of sum_node_list). */
static PyObject *add_two(PyObject *acc, PyObject *x)
{
    return (Tensor_Check(acc) && Tensor_Check(x)) ? ndl_t_add(acc, x) : PyNumber_Add(acc, x);
}

/* Left fold of the list with `+` (sum_node_list). */
static PyObject *sum_list(PyObject *list)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    PyObject *acc;
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "sum_node_list of an empty list");
        return NULL;
    }
    acc = Py_NewRef(PyList_GET_ITEM(list, 0));
    for (Py_ssize_t i = 1; i < n; i++) {
        PyObject *s = add_two(acc, PyList_GET_ITEM(list, i));
        Py_DECREF(acc);
        if (s == NULL)
            return NULL;
        acc = s;
    }
    return acc;
}

/* Note [Summing partials on arrival]: a node's partial adjoints are added
 * up as they arrive (v->partials is their running sum), not listed and
 * summed when the walk reaches the node. The sum is the same left fold in
 * the same order, so the same numbers (and, recording, the same graph); but
 * a weight used at every step of a sequence (an RNN's W_hh) holds one
 * buffer of its gradient instead of one per step until the walk reaches it
 * (40 steps of a 256x1024 LSTM weight: 40 MB, a third of the LSTM language
 * model's backward peak). */
static int add_partial(ValueObject *v, PyObject *g)
{
    PyObject *s;
    if (v->partials == NULL) {
        v->partials = Py_NewRef(g);
        return 0;
    }
    s = add_two(v->partials, g);
    if (s == NULL)
        return -1;
    Py_SETREF(v->partials, s);
    return 0;
}

/* The input gradients of one node with n inputs, into grads[0..n) (new refs
 * or NULL). */
static int node_gradients(ValueObject *node, Py_ssize_t n, PyObject *g, char *needs,
                          PyObject **grads)
{
    OpObject *op = (OpObject *)node->op;
    PyObject *r, *t;
    if (Op_Check(node->op) && op->def != NULL && Py_TYPE(op) == op->def->type) {
        if (ndl_check_node_arity(op, node) < 0)
            return -1;
        return op->def->backward(op, (ValueObject *)g, node, needs, grads);
    }
    /* A Python-defined op: its gradient_as_tuple, called through Python. */
    r = PyObject_CallMethod(node->op, "gradient", "OO", g, (PyObject *)node);
    if (r == NULL)
        return -1;
    t = ndl_as_grad_tuple(r);
    Py_DECREF(r);
    if (t == NULL)
        return -1;
    if (PyTuple_GET_SIZE(t) != n) {
        PyErr_Format(PyExc_ValueError, "%R.gradient returned %zd gradients for %zd inputs",
                     node->op, PyTuple_GET_SIZE(t), n);
        Py_DECREF(t);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        grads[i] = needs[i] ? Py_NewRef(PyTuple_GET_ITEM(t, i)) : NULL;
    Py_DECREF(t);
    return 0;
}

/* A node whose graph an earlier backward freed (Note [Freeing the graph]). */
static int graph_freed(ValueObject *node)
{
    return node->graph_freed && node->op != NULL && node->inputs != NULL &&
           PyTuple_GET_SIZE(node->inputs) == 0;
}

int ndl_compute_gradients(ValueObject *out, PyObject *out_grad, int flags)
{
    PyObject *roots, *order, *empty = NULL;
    Py_ssize_t n;
    int rc = -1, leaves_only = flags & NDL_GRAD_LEAVES_ONLY;
    /* Note [Reclaiming garbage graphs' data]: earlier steps' graphs are
     * unreachable by now in a training loop. */
    if (ndl_reclaim_scan() < 0)
        return -1;
    roots = PyList_New(1);
    if (roots == NULL)
        return -1;
    PyList_SET_ITEM(roots, 0, Py_NewRef(out));
    order = ndl_find_topo_sort(roots);
    Py_DECREF(roots);
    if (order == NULL)
        return -1;
    n = PyList_GET_SIZE(order);
    if ((flags & NDL_GRAD_FREE_GRAPH) && (empty = PyTuple_New(0)) == NULL)
        goto done;
    if (add_partial(out, out_grad) < 0)
        goto done;
    for (Py_ssize_t k = n - 1; k >= 0; k--) {
        ValueObject *node = (ValueObject *)PyList_GET_ITEM(order, k);
        PyObject *g, *partials = node->partials, *inputs;
        Py_ssize_t ni;
        char needs_s[NDL_OP_MAX_ARITY], *needs;
        PyObject *grads_s[NDL_OP_MAX_ARITY], **grads;
        int err = 0;
        if (partials == NULL)
            continue; /* no gradient flows here */
        if (graph_freed(node)) {
            PyErr_Format(PyExc_RuntimeError,
                         "backward: a %s made by %R is part of a graph that an earlier "
                         "backward(create_graph=False) freed; pass retain_graph=True to "
                         "that backward to run backward through the graph again",
                         Py_TYPE(node)->tp_name, node->op);
            goto done;
        }
        node->partials = NULL;
        g = partials; /* their sum: Note [Summing partials on arrival] */
        if (!leaves_only)
            ndl_reclaim_list(node); /* its recorded .grad may close a cycle */
        if (node->op == NULL) {
            Py_XSETREF(node->grad, g); /* .grad is overwritten, never accumulated */
            if (call_grad_ready_hook((PyObject *)node) < 0)
                goto done;
            continue;
        }
        /* NOTE: a no-graph backward keeps .grad on leaves only (as PyTorch
         * does), so intermediate gradients are freed as soon as they are used. */
        if (leaves_only)
            Py_CLEAR(node->grad);
        else
            Py_XSETREF(node->grad, Py_NewRef(g));
        /* NOTE: the walk holds its own reference to the inputs: a Python op's
         * gradient may reassign node.inputs, and the gradients it returns
         * belong to the inputs the node had. */
        inputs = Py_NewRef(node->inputs);
        ni = PyTuple_GET_SIZE(inputs);
        needs = ndl_small_array(needs_s, sizeof(char), ni);
        grads = needs ? ndl_small_array(grads_s, sizeof(PyObject *), ni) : NULL;
        err = grads == NULL;
        if (!err) {
            int any = 0;
            for (Py_ssize_t i = 0; i < ni; i++) {
                PyObject *x = PyTuple_GET_ITEM(inputs, i);
                needs[i] = Value_Check(x) && ((ValueObject *)x)->requires_grad;
                any |= needs[i];
                grads[i] = NULL;
            }
            if (any) {
                double t0 = ndl_hook_enter_backward(); /* the tools' hook, op_hook.c */
                err = node_gradients(node, ni, g, needs, grads) < 0;
                if (ndl_hook_backward(t0, err ? NULL : node, g, ni, grads) < 0)
                    err = 1;
            }
            for (Py_ssize_t i = 0; i < ni; i++) {
                if (!err && needs[i] && grads[i] != NULL && grads[i] != Py_None &&
                    add_partial((ValueObject *)PyTuple_GET_ITEM(inputs, i), grads[i]) < 0)
                    err = 1;
                Py_XDECREF(grads[i]);
            }
        }
        if (needs != NULL)
            ndl_small_array_free(needs, needs_s);
        if (grads != NULL)
            ndl_small_array_free(grads, grads_s);
        Py_DECREF(g);
        if (!err && empty != NULL && node->cached_data != NULL) {
            /* Note [Freeing the graph]; the inputs reference is still ours. */
            Py_SETREF(node->inputs, Py_NewRef(empty));
            node->graph_freed = 1;
            PyList_SET_ITEM(order, k, Py_NewRef(Py_None));
            Py_DECREF(node);
        }
        Py_DECREF(inputs);
        if (err)
            goto done;
    }
    rc = call_grad_ready_hook(Py_None);
done:
    /* Partials never outlive the walk, even on error. */
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = PyList_GET_ITEM(order, k);
        if (v != Py_None)
            Py_CLEAR(((ValueObject *)v)->partials);
    }
    Py_XDECREF(empty);
    Py_DECREF(order);
    return rc;
}

/* ---- Python-visible ------------------------------------------------------ */

PyObject *ndl_py_find_topo_sort(PyObject *m, PyObject *arg) { return ndl_find_topo_sort(arg); }

PyObject *ndl_py_compute_gradient_of_variables(PyObject *m, PyObject *args)
{
    PyObject *out, *g;
    if (!PyArg_ParseTuple(args, "O!O:compute_gradient_of_variables", &Value_Type, &out, &g))
        return NULL;
    if (ndl_compute_gradients((ValueObject *)out, g, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *ndl_py_sum_node_list(PyObject *m, PyObject *arg)
{
    PyObject *list = PySequence_List(arg), *r;
    if (list == NULL)
        return NULL;
    r = sum_list(list);
    Py_DECREF(list);
    return r;
}

PyObject *ndl_py_set_grad_ready_hook(PyObject *m, PyObject *hook)
{
    PyObject *old;
    if (hook != Py_None && !PyCallable_Check(hook)) {
        PyErr_Format(PyExc_TypeError, "set_grad_ready_hook expects a callable or None, got %.100s",
                     Py_TYPE(hook)->tp_name);
        return NULL;
    }
    old = grad_ready_hook != NULL ? grad_ready_hook : Py_NewRef(Py_None);
    grad_ready_hook = hook == Py_None ? NULL : Py_NewRef(hook);
    return old;
}
