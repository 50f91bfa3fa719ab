/* backend.h: a device's kernels, as a struct of function pointers.
 *
 * NDArray code never calls a kernel by name: it asks the array's device for
 * its backend and calls through this table, so the CUDA backend
 * (csrc/cuda/) slots in beside the CPU one without touching ndarray*.c.
 * Every pointer is a buffer start on that device; layouts are as in
 * Note [Layouts] (ndl_core.h). Functions return an ndl_status.
 */
#ifndef NDL_BACKEND_H
#define NDL_BACKEND_H

#include "ndl_core.h"

typedef struct ndl_backend {
    const char *name;
    int host_accessible; /* buffers are plain host memory (buffer protocol ok) */

    void *(*alloc)(size_t nbytes);  /* NULL on failure; 64-byte aligned */
    void (*free)(void *ptr);
    int (*to_host)(void *host_dst, const void *src, size_t nbytes);
    int (*from_host)(void *dst, const void *host_src, size_t nbytes);

    int (*fill)(ndl_dtype dt, void *dst, const ndl_layout *ld, double value);
    int (*copy)(ndl_dtype dst_dt, void *dst, const ndl_layout *ld,
                ndl_dtype src_dt, const void *src, const ndl_layout *ls);
    int (*unary)(ndl_unop op, ndl_dtype dt, const void *a, const ndl_layout *la, void *out);
    int (*binary)(ndl_binop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                  const void *b, const ndl_layout *lb, void *out);
    int (*reduce)(ndl_redop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                  uint64_t axes_mask, void *out);
    int (*matmul)(ndl_dtype dt, int64_t batch, int64_t m, int64_t n, int64_t p,
                  const void *a, const int64_t *a_offsets, int64_t rsa, int64_t csa,
                  const void *b, const int64_t *b_offsets, int64_t rsb, int64_t csb,
                  void *c);
    int (*adam)(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *m,
                const void *v, void *po, void *mo, void *vo, const ndl_adam_hparams *h);
    int (*sgd)(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *u, void *po,
               void *uo, const ndl_sgd_hparams *h);
} ndl_backend;

extern const ndl_backend ndl_cpu_backend;

#endif
