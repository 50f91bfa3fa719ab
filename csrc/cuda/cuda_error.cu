/* cuda_error.cu: the thread-local record of the last CUDA failure
 * (Note [CUDA errors], cuda_common.cuh). */
#include <stdio.h>
#include <string.h>

#include "cuda_common.cuh"

static thread_local char last_error[512];

int ndl_cuda_fail(cudaError_t err, const char *file, int line, const char *call)
{
    snprintf(last_error, sizeof last_error, "%s:%d: %s: %s (%s)", file, line, call,
             cudaGetErrorString(err), cudaGetErrorName(err));
    return NDL_EDEVICE;
}

void ndl_cuda_set_error(const char *msg) { snprintf(last_error, sizeof last_error, "%s", msg); }

/* Note [Out of memory detail] (ndl_args.c): an out-of-memory record is about
 * one request; the next allocation of this thread drops it. */
void ndl_cuda_clear_oom(void)
{
    static const char oom[] = NDL_CUDA_OOM;
    if (strncmp(last_error, oom, sizeof oom - 1) == 0)
        last_error[0] = '\0';
}

extern "C" const char *ndl_cuda_last_error(void) { return last_error; }
