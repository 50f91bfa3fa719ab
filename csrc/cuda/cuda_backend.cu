/* cuda_backend.cu: the CUDA entry of the backend table (backend.h), and the
 * probe that says whether it can run here. Every slot is filled, optional
 * ones included. NOTE: positional initializers, in backend.h's order. */
#include <stdio.h>

#include "cuda_common.cuh"

extern "C" const ndl_backend ndl_cuda_backend = {
    /* .name = */ "cuda",
    /* .host_accessible = */ 0,
    /* .scratch_bytes = */ (size_t)64 << 20,
    ndl_cuda_alloc,
    ndl_cuda_free,
    ndl_cuda_to_host,
    ndl_cuda_from_host,
    ndl_cuda_fill,
    ndl_cuda_copy,
    ndl_cuda_unary,
    ndl_cuda_binary,
    ndl_cuda_scalar,
    ndl_cuda_reduce,
    ndl_cuda_matmul,
    ndl_cuda_adam,
    ndl_cuda_sgd,
    ndl_cuda_pad,
    ndl_cuda_flip,
    ndl_cuda_dilate,
    ndl_cuda_im2col,
    ndl_cuda_softmax,
    ndl_cuda_softmax_grad,
    ndl_cuda_softmax_xent,
    ndl_cuda_softmax_xent_grad,
    ndl_cuda_layer_norm,
    ndl_cuda_layer_norm_grad,
    ndl_cuda_masked_scale,
    ndl_cuda_take_rows,
    ndl_cuda_scatter_add_rows,
    ndl_cuda_last_error,
};

/* NULL when a GPU can be used; else why not ("no driver", "no GPU", ...),
 * written into buf. */
extern "C" const char *ndl_cuda_probe(char *buf, size_t len)
{
    int count = 0, drv = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0)) {
        snprintf(buf, len, "no CUDA GPU is present (cudaGetDeviceCount found none)");
        return buf;
    }
    if (err == cudaErrorInsufficientDriver) {
        cudaDriverGetVersion(&drv);
        snprintf(buf, len,
                 drv == 0 ? "no CUDA driver is installed (libcuda.so not found)"
                          : "the CUDA driver (version %d) is older than this build needs",
                 drv);
        return buf;
    }
    if (err != cudaSuccess) {
        snprintf(buf, len, "CUDA cannot start: %s (%s)", cudaGetErrorString(err),
                 cudaGetErrorName(err));
        return buf;
    }
    /* The kernels are built for sm_80, sm_90 and compute_90 PTX (setup.py):
     * an older GPU would fail every launch ("no kernel image"), so it is
     * refused here, with its name, rather than enabled. */
    int major = 0, minor = 0;
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
    if (err == cudaSuccess)
        err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
    if (err != cudaSuccess) {
        snprintf(buf, len, "CUDA cannot query GPU 0: %s (%s)", cudaGetErrorString(err),
                 cudaGetErrorName(err));
        cudaGetLastError(); /* not sticky: cleared, the device stays disabled */
        return buf;
    }
    if (major < 8) {
        char name[256] = "GPU 0";
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
            snprintf(name, sizeof name, "%s", prop.name);
        else
            cudaGetLastError(); /* the name is only for the message */
        snprintf(buf, len,
                 "%s is sm_%d%d; needle._cuda is built for sm_80 and newer (compute "
                 "capability 8.0+)",
                 name, major, minor);
        return buf;
    }
    return NULL;
}

extern "C" int ndl_cuda_device_name(char *buf, size_t len)
{
    cudaDeviceProp prop;
    NDL_CUDA_TRY(cudaGetDeviceProperties(&prop, 0));
    snprintf(buf, len, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
             prop.totalGlobalMem / 1073741824.0);
    return NDL_OK;
}

extern "C" int ndl_cuda_synchronize(void)
{
    NDL_CUDA_TRY(cudaDeviceSynchronize());
    return NDL_OK;
}
