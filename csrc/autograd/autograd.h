/* autograd.h: tensors, ops and the backward pass (DESIGN.md layer 3).
 *
 * Python view (API.md 3-4):
 *     class Value: op, inputs, cached_data, requires_grad, num_outputs
 *     class Tensor(Value): grad, data, detach(), backward(out_grad=None, create_graph=True)
 *     class TensorTuple(Value)
 *     class Op / TensorOp(Op) / TensorTupleOp(Op): compute(*arrays), gradient(out_grad, node)
 *     EWiseAdd, AddScalar, ... : the built-in ops, C subclasses of TensorOp
 *
 * Note [The graph]
 *   A Value made by an op holds strong references to its op and its inputs
 *   (a tuple), so a result keeps its whole history alive; leaves hold only
 *   data. Nothing points forward. A result records op and inputs only when
 *   some input requires grad and recording is on; otherwise it is a leaf at
 *   once, so inference keeps no graph. Gradients are themselves computed
 *   with ops, so `.grad` may be a graph that refers back to its node
 *   (cycles): Values take part in the cyclic GC, and deep chains are freed
 *   through the trashcan (no C recursion on graph depth).
 *
 * Note [Array backends]
 *   cached_data is an NDArray in nd mode and a numpy.ndarray in np mode
 *   (NEEDLE_BACKEND, read once by needle.backend_selection). Built-in ops
 *   compute through the nda_* functions of array_api.c, which dispatch on
 *   the array's type, so each op is written once for both modes.
 */
#ifndef NDL_AUTOGRAD_H
#define NDL_AUTOGRAD_H

#include <string.h>

#include "../ndarray/ndarray.h"

/* ---- Values ------------------------------------------------------------- */
typedef struct ValueObject {
    PyObject_HEAD
    PyObject *op;          /* Op or NULL (a leaf) */
    PyObject *inputs;      /* tuple of Values (empty for leaves) */
    PyObject *cached_data; /* array, tuple of arrays (TensorTuple) or NULL */
    PyObject *grad;        /* Tensor or NULL */
    PyObject *dict;        /* instance attributes (subclasses, user fields) */
    PyObject *weakreflist;
    int num_outputs;
    char requires_grad;
    char counted;          /* counted in TENSOR_COUNTER */
    char realizing;        /* on the stack of ndl_value_realize (cycle check) */
    char graph_freed;      /* backward freed its inputs (Note [Freeing the graph]) */
    /* scratch for the backward walk (backward.c) */
    uint64_t visit_mark;
    PyObject *partials;    /* sum of the partial adjoints so far during backward, else NULL */
    /* Note [Reclaiming garbage graphs' data] (tensor_reclaim.c) */
    struct ValueObject *reclaim_prev, *reclaim_next;
    Py_ssize_t scan_refs;
    uint64_t scan_mark;
    char reclaim_listed, scan_reachable;
} ValueObject;

extern PyTypeObject Value_Type, Tensor_Type, TensorTuple_Type;
#define Value_Check(o) PyObject_TypeCheck(o, &Value_Type)
#define Tensor_Check(o) PyObject_TypeCheck(o, &Tensor_Type)
#define TensorTuple_Check(o) PyObject_TypeCheck(o, &TensorTuple_Type)

/* Process-wide autograd state (value.c). */
extern int64_t ndl_tensor_counter;
extern int ndl_lazy_mode;
extern _Thread_local int ndl_grad_enabled;
extern PyObject *ndl_empty_tuple; /* () */

/* A Value's lifetime (value.c). ndl_value_alloc: a fresh Value of `type`
 * with empty inputs. ndl_value_init fills its fields (references taken,
 * nothing stolen; requires_grad < 0: whether any input requires grad). */
ValueObject *ndl_value_alloc(PyTypeObject *type);
void ndl_value_init(ValueObject *self, PyObject *op, PyObject *inputs, int num_outputs,
                    PyObject *cached_data, int requires_grad);
int ndl_value_traverse(ValueObject *self, visitproc visit, void *arg);
int ndl_value_clear(ValueObject *self);
int ndl_value_state_init(void);

/* Data of a Value, computing it if needed (op.c). Borrowed reference or NULL. */
PyObject *ndl_value_realize(ValueObject *v);
/* A new leaf Tensor holding `data` (not copied). */
ValueObject *ndl_tensor_leaf(PyTypeObject *type, PyObject *data, int requires_grad);
/* Apply op to inputs (a tuple of Values) as make_from_op does (API.md 3.3):
 * a Tensor (or TensorTuple when tuple_result), recorded in the graph if some
 * input requires grad and recording is on, else a detached leaf. */
PyObject *ndl_make_from_op(PyTypeObject *result_type, PyObject *op, PyObject *inputs);

/* ---- Ops ---------------------------------------------------------------- */
#define NDL_OP_MAX_ARITY 4

struct ndl_opdef;

/* Per-input scratch of an op call (arrays, gradients, flags): a zeroed array
 * of n elements of `size` bytes in `stack` (room for NDL_OP_MAX_ARITY) when
 * it fits, else on the heap; NULL with MemoryError. Release it with
 * ndl_small_array_free(p, stack). */
static inline void *ndl_small_array(void *stack, size_t size, Py_ssize_t n)
{
    void *p;
    if (n <= NDL_OP_MAX_ARITY) {
        memset(stack, 0, size * NDL_OP_MAX_ARITY);
        return stack;
    }
    p = PyMem_Calloc((size_t)n, size);
    if (p == NULL)
        PyErr_NoMemory();
    return p;
}
static inline void ndl_small_array_free(void *p, void *stack)
{
    if (p != stack)
        PyMem_Free(p);
}

/* The constructor parameters of a built-in op (the `params` of its row in
 * ../ops.def), stored under the same names as attributes (API.md 4.1). */
typedef enum {
    NDL_P_NONE,          /* () */
    NDL_P_SCALAR,        /* (scalar) -> scalar, scalar_obj */
    NDL_P_C0_C1,         /* (c0, c1) -> c0, c1 */
    NDL_P_AXES,          /* (axes=None) -> axes */
    NDL_P_SHAPE,         /* (shape) -> shape */
    NDL_P_INDEX,         /* (index) -> index */
    NDL_P_AXIS,          /* (axis) -> axis */
    NDL_P_AXES_DILATION, /* (axes, dilation) -> axes, dilation */
    NDL_P_STRIDE_PADDING /* (stride=1, padding=0) -> stride, padding */
} ndl_params;

/* Axes as an op was given them: given == 0 for axes=None. */
typedef struct {
    int given;
    int n;
    int64_t v[NDL_MAX_DIMS];
} ndl_axes_param;

typedef struct {
    PyObject_HEAD
    const struct ndl_opdef *def; /* NULL for Python-defined ops */
    PyObject *dict;              /* the constructor's parameters, by name */
    PyObject *scalar_obj;        /* NDL_P_SCALAR: the scalar as given (for np mode) */
    union {                      /* the parsed parameters, by def->params */
        double scalar;                             /* NDL_P_SCALAR */
        struct { double c0, c1; };                 /* NDL_P_C0_C1 */
        struct {                                   /* NDL_P_AXES, NDL_P_AXES_DILATION */
            ndl_axes_param axes;
            int64_t dilation;
            /* Dilate made by ndl_t_dilate_to only (has_length): the output
             * length along axes.v[i] is length[i], the dilated length less
             * some trailing zeros (Note [Dilate to a length], ops_shape.c). */
            int has_length;
            int64_t length[NDL_MAX_DIMS];
        };
        struct { int ndim; int64_t dims[NDL_MAX_DIMS]; } shape; /* NDL_P_SHAPE */
        int64_t index;                             /* NDL_P_INDEX */
        int64_t axis;                              /* NDL_P_AXIS */
        struct {                                   /* NDL_P_STRIDE_PADDING */
            int64_t stride, padding;
            /* Conv made by ndl_t_conv only (general): padding pad_lo[j]
             * before and pad_hi[j] after spatial axis j (H, W), either sign
             * (negative crops), any Kh x Kw kernel, and the kernel's taps
             * `kernel_dilation` apart (Note [Conv's gradients are convs],
             * ops_conv.c); it is 1 unless general. `transposed`: the
             * input gradient of the conv (stride, pad_lo, pad_hi, the
             * kernel) of an out_hw[0] x out_hw[1] input, inputs (g, B)
             * (Note [Transposed conv], ndarray_conv.c). */
            int general, transposed;
            int64_t pad_lo[2], pad_hi[2], kernel_dilation, out_hw[2];
        };
    };
} OpObject;

extern PyTypeObject Op_Type, TensorOp_Type, TensorTupleOp_Type;
#define Op_Check(o) PyObject_TypeCheck(o, &Op_Type)
/* Op's GC slots, shared by every op class (op.c). */
int ndl_op_traverse(OpObject *self, visitproc visit, void *arg);
int ndl_op_clear(OpObject *self);

/* forward: the input arrays -> the output array (new reference or NULL).
 * backward: out_grad g, the node -> grads[k] (a new reference) for every k
 * with needs[k] set (others may be left NULL); 0, or -1 with an exception. */
typedef PyObject *(*ndl_forward_fn)(OpObject *op, PyObject *const *x, int n);
typedef int (*ndl_backward_fn)(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,
                               PyObject **grads);
#define NDL_FORWARD(Class) PyObject *ndl_fwd_##Class(OpObject *op, PyObject *const *x, int n)
#define NDL_BACKWARD(Class)                                                                        \
    int ndl_bwd_##Class(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,        \
                        PyObject **grads)

/* One built-in op: its row of ../ops.def, as data (op_table.c). */
typedef struct ndl_opdef {
    const char *name;        /* class name, e.g. "EWiseAdd" */
    const char *func;        /* function name in needle.ops, e.g. "add" */
    const char *method;      /* Tensor method, or NULL */
    int arity;               /* inputs; -1 = variadic (MakeTensorTuple) */
    int tuple_result;        /* a TensorTupleOp */
    ndl_params params;       /* which constructor parameters it takes */
    int kernel;              /* NDL_UN_* / NDL_BIN_* / NDL_RED_* of kernel rows, else -1 */
    unsigned host_inputs;    /* bit i: input i is read on the host (the row's `host`) */
    ndl_forward_fn forward;
    ndl_backward_fn backward;
    PyTypeObject *type;      /* set at module init */
    PyObject *function;      /* needle.ops.<func>, set at module init (a strong reference) */
    OpObject *instance;      /* shared instance of a parameterless op (tensor_ops.c) */
} ndl_opdef;

/* The table, generated from the rows (op_table.c): ndl_op_<Class> for each
 * op, the forward and backward of each, and the generic forwards of the
 * kernel rows (ops_ewise.c, ops_shape.c). */
#define NDL_OP_ROW(Class, func) extern ndl_opdef ndl_op_##Class; NDL_BACKWARD(Class);
#include "ops.def"
#define NDL_OP(Class, func, family, arity, params, method, host) NDL_FORWARD(Class);
#define NDL_TUPLE_OP(Class, func, family, arity, params) NDL_FORWARD(Class);
#include "ops.def"
NDL_FORWARD(unary);
NDL_FORWARD(binary);
NDL_FORWARD(scalar);
NDL_FORWARD(reduce);
extern ndl_opdef *const ndl_opdefs[];
extern const int ndl_num_opdefs;

int ndl_op_types_init(PyObject *module);
/* Install the Tensor methods generated from the op rows (tensor_ops.c). */
int ndl_tensor_methods_init(PyTypeObject *type);
/* 0, or -1 with an exception when node's inputs do not fit op's arity. */
int ndl_check_node_arity(OpObject *op, ValueObject *node);
/* A built-in op's gradients with every input needed, as a tuple. */
PyObject *ndl_op_gradient_tuple(OpObject *op, ValueObject *g, ValueObject *node);
/* A gradient() result as a tuple (new reference; r is borrowed): a tuple
 * itself, a list converted, anything else (a TensorTuple included) wrapped
 * in a 1-tuple. */
PyObject *ndl_as_grad_tuple(PyObject *r);
/* Parse a built-in op's constructor arguments into its fields (op_params.c);
 * param_attr reads one back by name (NULL, no exception, if none). */
int ndl_op_parse_params(OpObject *op, PyObject *args, PyObject *kwds);
PyObject *ndl_op_param_attr(OpObject *op, const char *name);

/* An int argument (anything with __index__) into *out; -1 with TypeError
 * naming `name` otherwise. */
int ndl_parse_int(PyObject *obj, int64_t *out, const char *name);
/* The row of a built-in op class or of a subclass of one; NULL for ops
 * defined in Python (op_table.c). */
const ndl_opdef *ndl_opdef_of_type(PyTypeObject *t);
/* The Python entry points of the tuple ops (ops_tuple.c): TupleGetItem's
 * tp_call (constant folding, API.md 4.2) and the function stack(args, axis). */
PyObject *ndl_tuple_get_item_call(PyObject *self, PyObject *args, PyObject *kwds);
extern PyMethodDef ndl_stack_function_def;
/* The function conv(a, b, stride=1, padding=1) (ops_conv.c): its padding
 * defaults to 1 while the class Conv's defaults to 0 (API.md 4.1). */
extern PyMethodDef ndl_conv_function_def;

/* Make the op `def`(params) with C values (no Python parsing): for the
 * backward rules, which build their graphs with ops. */
OpObject *ndl_op_new(const ndl_opdef *def);

/* ---- Tensor-level constructors used by backward rules (op_builders.c).
 * Each returns a new Tensor reference (recorded or not, per make_from_op)
 * or NULL with an exception. Arguments are borrowed. */
/* ndl_t_<func>(a) / (a, b) / (a, s) for every elementwise and scalar row */
#define NDL_UNARY(Class, func, KERNEL, kernel, numpy, method) PyObject *ndl_t_##func(PyObject *a);
#define NDL_BINARY(Class, func, KERNEL, kernel, numpy)                                             \
    PyObject *ndl_t_##func(PyObject *a, PyObject *b);
#define NDL_SCALAR(Class, func, KERNEL) PyObject *ndl_t_##func(PyObject *a, double s);
#include "ops.def"
/* A scalar op (AddScalar, MulScalar, DivScalar, PowerScalar) of a; s_obj,
 * if not NULL, is the scalar as a Python object (np mode keeps its type). */
PyObject *ndl_t_scalar_op(ndl_opdef *def, PyObject *a, double s, PyObject *s_obj);
/* The shared instance of the parameterless one-input op `def` applied to a. */
PyObject *ndl_t_apply_shared(ndl_opdef *def, PyObject *a);
PyObject *ndl_t_reshape(PyObject *a, int ndim, const int64_t *shape);
PyObject *ndl_t_broadcast_to(PyObject *a, int ndim, const int64_t *shape);
PyObject *ndl_t_summation(PyObject *a, int naxes, const int64_t *axes); /* naxes<0: all */
PyObject *ndl_t_transpose(PyObject *a, int64_t ax0, int64_t ax1);
PyObject *ndl_t_permute(PyObject *a, int naxes, const int64_t *axes);
PyObject *ndl_t_matmul(PyObject *a, PyObject *b);
PyObject *ndl_t_stack(PyObject *list, int64_t axis);
PyObject *ndl_t_split(PyObject *a, int64_t axis);
PyObject *ndl_t_make_tuple(PyObject *items);      /* a tuple of Tensors */
PyObject *ndl_t_tuple_get_item(PyObject *t, int64_t i);
PyObject *ndl_t_flip(PyObject *a, int naxes, const int64_t *axes);
PyObject *ndl_t_dilate(PyObject *a, int naxes, const int64_t *axes, int64_t d);
PyObject *ndl_t_undilate(PyObject *a, int naxes, const int64_t *axes, int64_t d);
/* dilate(a, axes, d) cut to length[i] along axes[i] (naxes >= 0 axes, in
 * range): drops trailing zeros, so (n-1)(d+1) < length[i] <= n(d+1)
 * (Note [Dilate to a length], ops_shape.c). */
PyObject *ndl_t_dilate_to(PyObject *a, int naxes, const int64_t *axes, int64_t d,
                          const int64_t *length);
/* Conv with stride s, lo[j] / hi[j] padding before / after spatial axis j
 * (negative crops) and any Kh x Kw kernel: the general Conv the gradients
 * of Conv are made of (Note [Conv's gradients are convs], ops_conv.c). */
PyObject *ndl_t_conv(PyObject *a, PyObject *b, int64_t s, int64_t d, const int64_t *lo,
                     const int64_t *hi);
/* The input gradient of the conv (stride s, padding lo / hi, kernel b) of an
 * out_hw[0] x out_hw[1] input, from its output gradient g: a general Conv
 * with `transposed` set (Note [Transposed conv], ndarray_conv.c). */
PyObject *ndl_t_conv_transpose(PyObject *g, PyObject *b, int64_t s, const int64_t *lo,
                               const int64_t *hi, const int64_t *out_hw);
/* lstm_gates(z, c): the TensorTuple (h', c') (ops_rnn.c) */
PyObject *ndl_t_lstm_gates(PyObject *z, PyObject *c);
/* gather_rows(a, idx) / scatter_rows(g, idx, shape): rows of a picked by
 * idx, and its gradient (rows of g added into zeros of `shape`). */
PyObject *ndl_t_gather_rows(PyObject *a, PyObject *idx);
PyObject *ndl_t_scatter_rows(PyObject *g, PyObject *idx, int ndim, const int64_t *shape);
/* A constant leaf (requires_grad False) holding array `data`. */
PyObject *ndl_t_const(PyObject *data);
/* Sum G over broadcast axes back to `shape` (API.md 4.3). */
PyObject *ndl_t_unbroadcast(PyObject *g, int ndim, const int64_t *shape);

/* The gradient of a sum over `axes` of an input of `shape`: g reshaped with
 * 1s at the reduced axes, broadcast back to shape (ops_shape.c). */
int ndl_grad_of_reduction(ValueObject *g, int ndim, const int64_t *shape, int naxes,
                          const int64_t *axes, PyObject **out);

/* Shape of a Value's data (realizing it). */
int ndl_value_shape(ValueObject *v, int *ndim, int64_t *shape);

/* ---- backward (backward.c) ---------------------------------------------- */
PyObject *ndl_find_topo_sort(PyObject *node_list); /* list, forward order */
/* Set .grad on every node that requires grad. flags: NDL_GRAD_LEAVES_ONLY
 * (the no-graph backward: leaves alone keep .grad), NDL_GRAD_FREE_GRAPH (each
 * node lets go of its inputs once its gradients are computed, as PyTorch
 * frees saved tensors when retain_graph is False). */
#define NDL_GRAD_LEAVES_ONLY 1
#define NDL_GRAD_FREE_GRAPH 2
int ndl_compute_gradients(ValueObject *out, PyObject *out_grad, int flags);

/* ---- data of unreachable gradient graphs (tensor_reclaim.c) -------------- */
void ndl_reclaim_list(ValueObject *v);   /* v got a recorded .grad: may join a cycle */
void ndl_reclaim_unlist(ValueObject *v); /* v is being freed */
int ndl_reclaim_scan(void);              /* free the data of unreachable listed graphs */

/* ---- the tools' hook (op_hook.c) ---------------------------------------- */
/* ndl_hook_start: a start time when a hook is set, else -1 (then the others
 * do nothing). ndl_hook_forward reports op(inputs) = out; the backward pair
 * brackets one node's gradient rule (node NULL: the rule failed). The ints are 0, or -1 with the hook's
 * exception set. */
double ndl_hook_start(void);
int ndl_hook_forward(PyObject *op, PyObject *inputs, PyObject *out, double t0);
double ndl_hook_enter_backward(void);
int ndl_hook_backward(double t0, ValueObject *node, PyObject *g, Py_ssize_t n,
                      PyObject *const *grads);
PyObject *ndl_py_set_op_hook(PyObject *m, PyObject *fn);

/* np mode state (value.c), set by _C._set_backend. */
extern int ndl_np_mode;
extern PyObject *ndl_np_device;

/* ---- the Python face of the Value types (tensor.c, tensor_ops.c) -------- */
extern PyNumberMethods ndl_tensor_as_number;
/* Fill the Python-facing slots of Value_Type, Tensor_Type and
 * TensorTuple_Type and ready them. */
int ndl_tensor_types_init(void);

/* ---- Python-visible functions (autograd_module.c registers them) -------- */
PyObject *ndl_py_find_topo_sort(PyObject *m, PyObject *arg);
PyObject *ndl_py_compute_gradient_of_variables(PyObject *m, PyObject *args);
PyObject *ndl_py_sum_node_list(PyObject *m, PyObject *arg);
PyObject *ndl_py_set_grad_ready_hook(PyObject *m, PyObject *hook);
int ndl_autograd_init(PyObject *module);

#endif
