// The ring engine's kernels (scalecom_cuda.h, "What the ring engine needs"):
// the chunk owner's selection, a hop's in-place accumulation of indices that
// came from another rank, the mean, and the memory the engine stages
// messages in. Same arithmetic as csrc/ring's host path: one round-to-nearest
// addition or division per value, so both give the same bits.

#include "scalecom_cuda.h"

#include "common.cuh"

namespace {

using namespace scalecom_cuda;

// select_topk gives chunk-local indices: make them the tensor's, and read m + g there.
template <typename G>
__global__ void owner_values(const float* __restrict__ m, const G* __restrict__ g, int32_t lo,
                             int32_t* __restrict__ idx, int64_t k, float* __restrict__ values) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t j = idx[t] + lo;
    idx[t] = j;
    values[t] = __fadd_rn(m[j], to_float(g[j]));
  }
}

template <typename G>
__global__ void accumulate_kernel(const float* __restrict__ m, const G* __restrict__ g,
                                  int64_t lo, int64_t hi, const int32_t* __restrict__ idx,
                                  int64_t k, float* __restrict__ values, int* __restrict__ bad) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx[t];
    if (j < lo || j >= hi || (t > 0 && j <= idx[t - 1])) {
      *bad = 1;
      continue;
    }
    values[t] = __fadd_rn(values[t], __fadd_rn(m[j], to_float(g[j])));
  }
}

__global__ void divide_kernel(const float* __restrict__ sums, int64_t k, float divisor,
                              float* __restrict__ out) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[t] = __fdiv_rn(sums[t], divisor);
  }
}

template <typename G>
int owner_values_typed(const float* m, const void* g, int32_t lo, int32_t* idx, int64_t k,
                       float* values, cudaStream_t stream) {
  owner_values<G><<<blocks_for(k), kThreads, 0, stream>>>(m, static_cast<const G*>(g), lo, idx,
                                                          k, values);
  SCALECOM_LAUNCHED();
  return cudaSuccess;
}

template <typename G>
int accumulate_typed(const float* m, const void* g, int64_t lo, int64_t hi, const int32_t* idx,
                     int64_t k, float* values, int* bad, cudaStream_t stream) {
  accumulate_kernel<G><<<blocks_for(k), kThreads, 0, stream>>>(
      m, static_cast<const G*>(g), lo, hi, idx, k, values, bad);
  SCALECOM_LAUNCHED();
  return cudaSuccess;
}

size_t element_size(int grad_type) {
  switch (grad_type) {
    case SCALECOM_F32: return 4;
    case SCALECOM_F16:
    case SCALECOM_BF16: return 2;
    default: return 0;
  }
}

bool valid_chunk(int64_t lo, int64_t hi, int64_t k) {
  return lo >= 0 && hi >= lo && hi <= 0x7fffffffLL && k >= 0 && k <= hi - lo;
}

}  // namespace

extern "C" {

int scalecom_cuda_ring_select(const float* memory, const void* grad, int grad_type, int64_t lo,
                              int64_t hi, int64_t k, int32_t* indices, float* values,
                              void* workspace, size_t workspace_bytes, void* stream_ptr) {
  const size_t elem = element_size(grad_type);
  if (!valid_chunk(lo, hi, k) || elem == 0) return cudaErrorInvalidValue;
  if (k == 0) return cudaSuccess;
  const int err = scalecom_cuda_select_topk(
      memory + lo, static_cast<const char*>(grad) + lo * elem, grad_type, hi - lo, k, indices,
      workspace, workspace_bytes, stream_ptr);
  if (err != cudaSuccess) return err;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const auto lo32 = static_cast<int32_t>(lo);
  switch (grad_type) {
    case SCALECOM_F32:
      return owner_values_typed<float>(memory, grad, lo32, indices, k, values, stream);
    case SCALECOM_F16:
      return owner_values_typed<__half>(memory, grad, lo32, indices, k, values, stream);
    default:
      return owner_values_typed<__nv_bfloat16>(memory, grad, lo32, indices, k, values, stream);
  }
}

int scalecom_cuda_ring_accumulate(const float* memory, const void* grad, int grad_type,
                                  int64_t lo, int64_t hi, const int32_t* indices, int64_t k,
                                  float* values, int* bad, void* stream_ptr) {
  if (!valid_chunk(lo, hi, 0) || k < 0 || bad == nullptr || element_size(grad_type) == 0)
    return cudaErrorInvalidValue;
  if (k == 0) return cudaSuccess;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (grad_type) {
    case SCALECOM_F32:
      return accumulate_typed<float>(memory, grad, lo, hi, indices, k, values, bad, stream);
    case SCALECOM_F16:
      return accumulate_typed<__half>(memory, grad, lo, hi, indices, k, values, bad, stream);
    default:
      return accumulate_typed<__nv_bfloat16>(memory, grad, lo, hi, indices, k, values, bad,
                                             stream);
  }
}

int scalecom_cuda_ring_divide(const float* sums, int64_t k, float divisor, float* out,
                              void* stream_ptr) {
  if (k < 0) return cudaErrorInvalidValue;
  if (k == 0) return cudaSuccess;
  divide_kernel<<<blocks_for(k), kThreads, 0, static_cast<cudaStream_t>(stream_ptr)>>>(
      sums, k, divisor, out);
  SCALECOM_LAUNCHED();
  return cudaSuccess;
}

int scalecom_cuda_copy_async(void* dst, const void* src, size_t bytes, void* stream_ptr) {
  if (bytes == 0) return cudaSuccess;
  return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault,
                         static_cast<cudaStream_t>(stream_ptr));
}

int scalecom_cuda_synchronize(void* stream_ptr) {
  return cudaStreamSynchronize(static_cast<cudaStream_t>(stream_ptr));
}

int scalecom_cuda_set_device(int device) { return cudaSetDevice(device); }

int scalecom_cuda_device_alloc(void** ptr, size_t bytes) { return cudaMalloc(ptr, bytes); }
int scalecom_cuda_device_free(void* ptr) { return cudaFree(ptr); }
int scalecom_cuda_host_alloc(void** ptr, size_t bytes) { return cudaMallocHost(ptr, bytes); }
int scalecom_cuda_host_free(void* ptr) { return cudaFreeHost(ptr); }

}  // extern "C"
