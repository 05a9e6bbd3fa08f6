// What the kernel files of csrc/cuda share: launch shape, the gradient
// types read as float, argument checks and the error-return macros.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace scalecom_cuda {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 4096;
constexpr size_t kAlign = 256;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

inline int blocks_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

inline size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// int32 indices address the tensor: numel fits them.
inline bool valid(int64_t numel, int64_t k) {
  return numel >= 0 && numel <= 0x7fffffffLL && k >= 0 && k <= numel;
}

}  // namespace scalecom_cuda

#define SCALECOM_TRY(expr)                          \
  do {                                              \
    const cudaError_t err_ = (expr);                \
    if (err_ != cudaSuccess) return err_;           \
  } while (0)

#define SCALECOM_LAUNCHED() SCALECOM_TRY(cudaGetLastError())
