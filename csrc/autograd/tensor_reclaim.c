/* tensor_reclaim.c: the arrays of gradient graphs that nothing can reach any
 * more are freed at the next backward, long before Python's cyclic GC frees
 * the Values themselves.
 *
 * Note [Reclaiming garbage graphs' data]
 *   A recorded backward (create_graph=True, the default) makes reference
 *   cycles: a node's .grad is a graph that refers back to the node or to its
 *   consumers (Note [The graph]). API.md 3.1 requires such Values to stay
 *   until the cyclic GC frees them (TENSOR_COUNTER counts them; the library
 *   must not call gc.collect() or tear graphs down), but until the GC's
 *   older generations run, which can take hundreds of training steps, their
 *   arrays stayed too: the natural training loop held 5x PyTorch's memory.
 *
 *   Nothing can read the data of a Value that nothing reaches, so at the
 *   start of each backward this file finds the Values of earlier recorded
 *   graphs that are unreachable and drops their cached_data; the Values,
 *   their op, inputs and .grad links stay, counted, for the GC. Python
 *   equivalent, over the set S of listed Values and everything their inputs
 *   and .grad reach:
 *       refs = {v: sys.getrefcount(v) for v in S}
 *       for v in S:                       # references from inside S
 *           for w in v.inputs + (v.grad,): refs[w] -= 1
 *       alive = closure over inputs/.grad of {v in S: refs[v] > 0}
 *       for v in S - alive: v.cached_data = None
 *   (the trial deletion of CPython's own collector, on a few hundred nodes).
 *   Only references we know to be S-internal are subtracted: an inputs
 *   tuple counts only when the node owns it alone, and references from ops,
 *   instance dicts, lists or weak references are outside S, so the Values
 *   they hold count as reachable. Wrongly keeping data is possible; wrongly
 *   freeing it is not.
 *
 *   Listed: every Value that got a .grad from a recorded backward (only
 *   those can close a cycle; everything else is freed by reference
 *   counting). A Value leaves the list when it is freed or found
 *   unreachable. A scan runs once the Values listed since the last one
 *   number at least a quarter of those it kept, so a loop that keeps every
 *   graph alive costs amortized O(1) per node, and graphs dropped after being
 *   kept for a while are reached within a few backward calls.
 */
#include "array_api.h"

static ValueObject *listed;      /* head of the doubly linked list */
static Py_ssize_t n_listed;      /* its length */
static Py_ssize_t survivors;     /* listed Values the last scan kept, still listed */
static Py_ssize_t added;         /* Values listed since the last scan */
static uint64_t scan_epoch;

void ndl_reclaim_list(ValueObject *v)
{
    if (v->reclaim_listed)
        return;
    v->reclaim_listed = 1;
    v->scan_reachable = 0; /* not one of the last scan's survivors */
    added++;
    v->reclaim_prev = NULL;
    v->reclaim_next = listed;
    if (listed != NULL)
        listed->reclaim_prev = v;
    listed = v;
    n_listed++;
}

void ndl_reclaim_unlist(ValueObject *v)
{
    if (!v->reclaim_listed)
        return;
    if (v->reclaim_prev != NULL)
        v->reclaim_prev->reclaim_next = v->reclaim_next;
    else
        listed = v->reclaim_next;
    if (v->reclaim_next != NULL)
        v->reclaim_next->reclaim_prev = v->reclaim_prev;
    v->reclaim_prev = v->reclaim_next = NULL;
    v->reclaim_listed = 0;
    n_listed--;
    if (v->scan_reachable)
        survivors--; /* the listed Values a scan kept are exactly those marked */
}

/* A growable array of borrowed Values (no Python code runs while one is in
 * use, so none of them can be freed meanwhile). */
typedef struct {
    ValueObject **v;
    Py_ssize_t n, cap;
} vset;

static int vset_push(vset *s, ValueObject *v)
{
    if (s->n == s->cap) {
        Py_ssize_t cap = s->cap ? 2 * s->cap : 256;
        ValueObject **bigger = PyMem_Realloc(s->v, sizeof(ValueObject *) * (size_t)cap);
        if (bigger == NULL)
            return -1;
        s->v = bigger;
        s->cap = cap;
    }
    s->v[s->n++] = v;
    return 0;
}

static ValueObject *as_member(PyObject *o, uint64_t mark)
{
    return o != NULL && Value_Check(o) && ((ValueObject *)o)->scan_mark == mark
               ? (ValueObject *)o : NULL;
}

/* Put o into S (once); its count starts at its reference count. */
static int add_member(vset *s, PyObject *o, uint64_t mark)
{
    ValueObject *v;
    if (o == NULL || !Value_Check(o) || ((ValueObject *)o)->scan_mark == mark)
        return 0;
    v = (ValueObject *)o;
    v->scan_mark = mark;
    v->scan_refs = Py_REFCNT(o);
    v->scan_reachable = 0;
    return vset_push(s, v);
}

/* The inputs tuple's items count as v's own references only when v alone
 * holds the tuple. */
static int owns_inputs(ValueObject *v)
{
    return v->inputs != NULL && PyTuple_CheckExact(v->inputs) && Py_REFCNT(v->inputs) == 1;
}

/* S: the listed Values and all that their inputs and .grad reach. */
static int collect(vset *s, uint64_t mark)
{
    for (ValueObject *v = listed; v != NULL; v = v->reclaim_next)
        if (add_member(s, (PyObject *)v, mark) < 0)
            return -1;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        ValueObject *v = s->v[i];
        if (add_member(s, v->grad, mark) < 0)
            return -1;
        if (v->inputs != NULL && PyTuple_Check(v->inputs))
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(v->inputs); k++)
                if (add_member(s, PyTuple_GET_ITEM(v->inputs, k), mark) < 0)
                    return -1;
    }
    return 0;
}

/* Mark v reachable and push it for the walk. */
static int reach(vset *stack, ValueObject *v)
{
    if (v == NULL || v->scan_reachable)
        return 0;
    v->scan_reachable = 1;
    return vset_push(stack, v);
}

/* Trial deletion over S; then mark what the externally held members reach. */
static int mark_reachable(vset *s, vset *stack, uint64_t mark)
{
    for (Py_ssize_t i = 0; i < s->n; i++) {
        ValueObject *v = s->v[i], *w;
        if ((w = as_member(v->grad, mark)) != NULL)
            w->scan_refs--;
        if (owns_inputs(v))
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(v->inputs); k++)
                if ((w = as_member(PyTuple_GET_ITEM(v->inputs, k), mark)) != NULL)
                    w->scan_refs--;
    }
    for (Py_ssize_t i = 0; i < s->n; i++) {
        ValueObject *v = s->v[i];
        /* NOTE: weakly referenced, mid-backward or mid-realize Values are
         * treated as held from outside: their data may still be read. */
        if ((v->scan_refs != 0 || v->weakreflist != NULL || v->partials != NULL ||
             v->realizing) && reach(stack, v) < 0)
            return -1;
    }
    while (stack->n > 0) {
        ValueObject *v = stack->v[--stack->n];
        if (reach(stack, as_member(v->grad, mark)) < 0)
            return -1;
        if (v->inputs != NULL && PyTuple_Check(v->inputs))
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(v->inputs); k++)
                if (reach(stack, as_member(PyTuple_GET_ITEM(v->inputs, k), mark)) < 0)
                    return -1;
    }
    return 0;
}

/* Drop the data of the unreachable members. They are held for the duration,
 * because freeing an array may run Python code (a DLPack deleter, say) and
 * with it the GC, which would otherwise free them under us. */
static void release(vset *s)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < s->n; i++)
        if (!s->v[i]->scan_reachable)
            s->v[n++] = (ValueObject *)Py_NewRef(s->v[i]);
    s->n = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        ndl_reclaim_unlist(s->v[i]);
        Py_CLEAR(s->v[i]->cached_data);
    }
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(s->v[i]);
}

int ndl_reclaim_scan(void)
{
    vset s = {0}, stack = {0};
    uint64_t mark;
    int rc = -1;
    if (n_listed == 0 || 4 * added < survivors)
        return 0;
    mark = ++scan_epoch;
    if (collect(&s, mark) < 0 || mark_reachable(&s, &stack, mark) < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    release(&s);
    survivors = n_listed;
    added = 0;
    rc = 0;
fail:
    PyMem_Free(s.v);
    PyMem_Free(stack.v);
    return rc;
}
