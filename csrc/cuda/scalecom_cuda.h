// ScaleCom's kernels on the GPU: the same arithmetic and tie rule as the CPU
// core (csrc/core/scalecom.h, horovod_scalecom/reference/core.py).
//
// A framework-free C ABI over raw device pointers and a cudaStream_t (passed
// as void*), so that any frontend (ctypes, torch, TensorFlow) can call it.
// Every function returns a cudaError_t as int, 0 on success, and only
// enqueues work on `stream` (no host synchronisation), except
// synchronize and the allocations.
//
// Every build checks these prototypes against the ctypes table of
// horovod_scalecom/cuda.py (cuda_build.check_signatures: keep each as
// `int scalecom_cuda_NAME(...);` or `const char* ...`); the ring engine takes
// the functions by name (csrc/ring/buffers.h), typed by decltype.
//
// Callers: the torch ops' CUDA kernels (csrc/torch/cuda_ops.cc), the
// TensorFlow ops' GPU kernels (csrc/tensorflow/gpu_kernels.cc) and the ring
// engine's device buffers (csrc/ring/buffers.h, addresses from
// horovod_scalecom.cuda). Status: compiled for sm_80 and sm_90 by the
// test suite; not yet run on a GPU (docs/design.md).

#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Gradient element types; the memory is always float32.
enum ScalecomGradType { SCALECOM_F32 = 0, SCALECOM_F16 = 1, SCALECOM_BF16 = 2 };

// Scratch bytes select_topk needs for a tensor of numel elements.
int scalecom_cuda_select_workspace_bytes(int64_t numel, int64_t k, size_t* bytes);

// indices[0..k) = the k largest |memory + grad|, ties to the lower index,
// NaN above +inf, in ascending order (int32).
int scalecom_cuda_select_topk(const float* memory, const void* grad, int grad_type,
                              int64_t numel, int64_t k, int32_t* indices, void* workspace,
                              size_t workspace_bytes, void* stream);

// Scratch bytes gather_update needs for k indices.
int scalecom_cuda_gather_update_workspace_bytes(int64_t k, size_t* bytes);

// values[t] = memory[I[t]] + grad[I[t]]; then the low-pass update
//   j not in I: memory[j] += beta32 * grad[j]   (kept when not finite)
//   j in I:     memory[j] *= 1 - beta32
// `indices` ascending and unique (as select_topk returns them). *nonfinite
// (a device counter, set, not added to) = entries off I that refused a
// non-finite update.
int scalecom_cuda_gather_update(float* memory, const void* grad, int grad_type, int64_t numel,
                                const int32_t* indices, int64_t k, float beta, float* values,
                                unsigned long long* nonfinite, void* workspace,
                                size_t workspace_bytes, void* stream);

// out[0..numel) = 0, out[I[t]] = values[t].
int scalecom_cuda_scatter(const int32_t* indices, const float* values, int64_t k, int64_t numel,
                          float* out, void* stream);

// --- What the ring engine (csrc/ring, the ScaleCom ring) needs besides the above ---

// The chunk owner's step on [lo, hi) of a tensor: indices[0..k) = the top-k
// |memory + grad| of the chunk as tensor indices (lo added), ascending, and
// values[t] = memory[I[t]] + grad[I[t]]. Workspace: select_workspace_bytes(hi - lo, k).
int scalecom_cuda_ring_select(const float* memory, const void* grad, int grad_type, int64_t lo,
                              int64_t hi, int64_t k, int32_t* indices, float* values,
                              void* workspace, size_t workspace_bytes, void* stream);

// One reduce-scatter hop, in place: values[t] = values[t] + (memory[I[t]] + grad[I[t]]).
// The indices came from another rank: one outside [lo, hi), or not above its
// predecessor, sets *bad = 1 and is not read.
int scalecom_cuda_ring_accumulate(const float* memory, const void* grad, int grad_type,
                                  int64_t lo, int64_t hi, const int32_t* indices, int64_t k,
                                  float* values, int* bad, void* stream);

// out[t] = sums[t] / divisor, IEEE round-to-nearest like the CPU's division.
int scalecom_cuda_ring_divide(const float* sums, int64_t k, float divisor, float* out,
                              void* stream);

// cudaMemcpyAsync(cudaMemcpyDefault) on `stream`; no wait.
int scalecom_cuda_copy_async(void* dst, const void* src, size_t bytes, void* stream);
int scalecom_cuda_synchronize(void* stream);

// cudaSetDevice, for a thread of the caller's (the ring engine's) that
// launches work on `device` without having made it current.
int scalecom_cuda_set_device(int device);

// The ring's message buffers: device memory, and pinned host memory for
// staging them when MPI cannot read device memory.
int scalecom_cuda_device_alloc(void** ptr, size_t bytes);
int scalecom_cuda_device_free(void* ptr);
int scalecom_cuda_host_alloc(void** ptr, size_t bytes);
int scalecom_cuda_host_free(void* ptr);

const char* scalecom_cuda_error_string(int code);

#ifdef __cplusplus
}
#endif
