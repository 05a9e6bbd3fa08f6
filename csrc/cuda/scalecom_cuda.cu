// ScaleCom's kernels on the GPU (see scalecom_cuda.h for the contract).
//
// Exactness over cleverness: nothing here has run on a GPU yet, so the
// selection is built from CUB primitives around two small custom kernels.
//
// select_topk(m, g, k):
//   1. keys[i] = bits(|m_i + g_i|) & 0x7fffffff      (orders like |p|, NaN on top)
//   2. radix select, MSB first, 4 passes of 8 bits: a 256-bin histogram of the
//      next digit among keys that match the digits chosen so far, then one
//      thread picks the digit where the count from the top reaches the
//      number still to choose. After 4 passes: the exact k-th largest key T
//      and `remaining`, how many keys equal to T belong to the top k.
//   3. DeviceSelect (order-preserving) of the indices with key > T, and of
//      those with key == T, of which the first `remaining` are kept: the tie
//      rule (lower index first) falls out of the order.
//   4. DeviceRadixSort of the k indices: ascending, as the CPU core returns.
// gather_update: values and the decayed selected entries from the original
// memory, then one pass of the low-pass update over all entries, then the
// selected entries restored to their decayed value. Every float operation is
// an explicit round-to-nearest intrinsic, so nvcc cannot contract m + beta*g
// into an FMA (the CPU core is built with -ffp-contract=off for the same reason).

#include "scalecom_cuda.h"

#include "common.cuh"

#include <cub/cub.cuh>
#include <thrust/iterator/counting_iterator.h>

namespace {

using namespace scalecom_cuda;

struct RadixState {
  uint32_t prefix;       // digits of T chosen so far
  uint32_t mask;         // which bits of prefix are chosen
  unsigned long long remaining;  // how many of the matching keys still to take
};

template <typename G>
__global__ void keys_kernel(const float* __restrict__ m, const G* __restrict__ g, int64_t n,
                            uint32_t* __restrict__ keys) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float p = __fadd_rn(m[i], to_float(g[i]));
    keys[i] = __float_as_uint(p) & 0x7fffffffu;
  }
}

__global__ void init_state(RadixState* st, unsigned int* hist, unsigned long long k) {
  st->prefix = 0;
  st->mask = 0;
  st->remaining = k;
  for (int b = 0; b < 256; ++b) hist[b] = 0;
}

__global__ void digit_histogram(const uint32_t* __restrict__ keys, int64_t n,
                                const RadixState* __restrict__ st, int shift,
                                unsigned int* __restrict__ hist) {
  __shared__ unsigned int local[256];
  for (int b = threadIdx.x; b < 256; b += blockDim.x) local[b] = 0;
  __syncthreads();
  const uint32_t prefix = st->prefix, mask = st->mask;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t key = keys[i];
    if ((key & mask) == prefix) atomicAdd(&local[(key >> shift) & 0xffu], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < 256; b += blockDim.x) {
    if (local[b]) atomicAdd(&hist[b], local[b]);
  }
}

// One thread: the digit at which the count of matching keys, from the largest
// digit down, reaches `remaining`; the keys with larger digits are all taken.
__global__ void choose_digit(RadixState* st, unsigned int* hist, int shift) {
  const unsigned long long remaining = st->remaining;
  unsigned long long above = 0;
  int digit = 0;
  for (int b = 255; b >= 0; --b) {
    if (above + hist[b] >= remaining) {
      digit = b;
      break;
    }
    above += hist[b];
  }
  st->remaining = remaining - above;
  st->prefix |= static_cast<uint32_t>(digit) << shift;
  st->mask |= 0xffu << shift;
  for (int b = 0; b < 256; ++b) hist[b] = 0;
}

struct KeyAbove {
  const uint32_t* keys;
  const RadixState* st;
  __device__ bool operator()(int32_t i) const { return keys[i] > st->prefix; }
};

struct KeyEquals {
  const uint32_t* keys;
  const RadixState* st;
  __device__ bool operator()(int32_t i) const { return keys[i] == st->prefix; }
};

// The first `remaining` indices whose key equals T follow the k - remaining above it.
__global__ void append_ties(const int32_t* __restrict__ equal, const RadixState* __restrict__ st,
                            int64_t k, int32_t* __restrict__ collected) {
  const int64_t take = static_cast<int64_t>(st->remaining);
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < take;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    collected[k - take + t] = equal[t];
  }
}

template <typename G>
__global__ void gather_kernel(const float* __restrict__ m, const G* __restrict__ g,
                              const int32_t* __restrict__ idx, int64_t k, float beta,
                              float decay, float* __restrict__ values,
                              float* __restrict__ decayed,
                              unsigned long long* __restrict__ selected_nonfinite) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t j = idx[t];
    const float mj = m[j], gj = to_float(g[j]);
    values[t] = __fadd_rn(mj, gj);
    decayed[t] = __fmul_rn(decay, mj);
    // update_kernel counts every entry; these are subtracted again at the end.
    if (!isfinite(__fadd_rn(mj, __fmul_rn(beta, gj)))) atomicAdd(selected_nonfinite, 1ull);
  }
}

template <typename G>
__global__ void update_kernel(float* __restrict__ m, const G* __restrict__ g, int64_t n,
                              float beta, unsigned long long* __restrict__ nonfinite) {
  unsigned long long kept = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float updated = __fadd_rn(m[i], __fmul_rn(beta, to_float(g[i])));
    if (isfinite(updated)) {
      m[i] = updated;
    } else {
      ++kept;   // the non-finite policy: a NaN/Inf never enters the memory
    }
  }
  using Reduce = cub::BlockReduce<unsigned long long, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const unsigned long long block_kept = Reduce(temp).Sum(kept);
  if (threadIdx.x == 0 && block_kept) atomicAdd(nonfinite, block_kept);
}

__global__ void restore_kernel(float* __restrict__ m, const int32_t* __restrict__ idx, int64_t k,
                               const float* __restrict__ decayed) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    m[idx[t]] = decayed[t];
  }
}

__global__ void finish_count(unsigned long long* nonfinite,
                             const unsigned long long* selected_nonfinite) {
  *nonfinite -= *selected_nonfinite;
}

__global__ void scatter_kernel(const int32_t* __restrict__ idx, const float* __restrict__ values,
                               int64_t k, float* __restrict__ out) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < k;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[idx[t]] = values[t];
  }
}

// Workspace of select_topk, carved in this order.
struct SelectLayout {
  size_t state, hist, counts, keys, equal, collected, cub_temp, total, cub_bytes;
};

int select_layout(int64_t n, int64_t k, SelectLayout* out) {
  size_t select_bytes = 0, sort_bytes = 0;
  thrust::counting_iterator<int32_t> first(0);
  cudaError_t err = cub::DeviceSelect::If(nullptr, select_bytes, first,
                                          static_cast<int32_t*>(nullptr),
                                          static_cast<int*>(nullptr), n,
                                          KeyAbove{nullptr, nullptr});
  if (err != cudaSuccess) return err;
  err = cub::DeviceRadixSort::SortKeys(nullptr, sort_bytes, static_cast<const int32_t*>(nullptr),
                                       static_cast<int32_t*>(nullptr), k);
  if (err != cudaSuccess) return err;
  size_t at = 0;
  out->state = at;     at += aligned(sizeof(RadixState));
  out->hist = at;      at += aligned(256 * sizeof(unsigned int));
  out->counts = at;    at += aligned(2 * sizeof(int));
  out->keys = at;      at += aligned(static_cast<size_t>(n) * sizeof(uint32_t));
  out->equal = at;     at += aligned(static_cast<size_t>(n) * sizeof(int32_t));
  out->collected = at; at += aligned(static_cast<size_t>(k) * sizeof(int32_t));
  out->cub_bytes = select_bytes > sort_bytes ? select_bytes : sort_bytes;
  out->cub_temp = at;  at += aligned(out->cub_bytes);
  out->total = at;
  return cudaSuccess;
}

template <typename G>
int select_typed(const float* m, const G* g, int64_t n, int64_t k, int32_t* indices,
                 char* ws, const SelectLayout& lay, cudaStream_t stream) {
  auto* st = reinterpret_cast<RadixState*>(ws + lay.state);
  auto* hist = reinterpret_cast<unsigned int*>(ws + lay.hist);
  auto* counts = reinterpret_cast<int*>(ws + lay.counts);
  auto* keys = reinterpret_cast<uint32_t*>(ws + lay.keys);
  auto* equal = reinterpret_cast<int32_t*>(ws + lay.equal);
  auto* collected = reinterpret_cast<int32_t*>(ws + lay.collected);
  void* temp = ws + lay.cub_temp;
  const int blocks = blocks_for(n);

  keys_kernel<G><<<blocks, kThreads, 0, stream>>>(m, g, n, keys);
  SCALECOM_LAUNCHED();
  init_state<<<1, 1, 0, stream>>>(st, hist, static_cast<unsigned long long>(k));
  SCALECOM_LAUNCHED();
  for (int shift = 24; shift >= 0; shift -= 8) {
    digit_histogram<<<blocks, kThreads, 0, stream>>>(keys, n, st, shift, hist);
    SCALECOM_LAUNCHED();
    choose_digit<<<1, 1, 0, stream>>>(st, hist, shift);
    SCALECOM_LAUNCHED();
  }
  thrust::counting_iterator<int32_t> first(0);
  size_t bytes = lay.cub_bytes;
  // Both selections keep index order; the keys above T number k - remaining.
  SCALECOM_TRY(cub::DeviceSelect::If(temp, bytes, first, collected, counts, n,
                                     KeyAbove{keys, st}, stream));
  bytes = lay.cub_bytes;
  SCALECOM_TRY(cub::DeviceSelect::If(temp, bytes, first, equal, counts + 1, n,
                                     KeyEquals{keys, st}, stream));
  append_ties<<<blocks_for(k), kThreads, 0, stream>>>(equal, st, k, collected);
  SCALECOM_LAUNCHED();
  bytes = lay.cub_bytes;
  SCALECOM_TRY(cub::DeviceRadixSort::SortKeys(temp, bytes, collected, indices, k, 0,
                                               static_cast<int>(8 * sizeof(int32_t)), stream));
  return cudaSuccess;
}

template <typename G>
int gather_update_typed(float* m, const G* g, int64_t n, const int32_t* idx, int64_t k,
                        float beta, float* values, unsigned long long* nonfinite, char* ws,
                        cudaStream_t stream) {
  auto* selected_nonfinite = reinterpret_cast<unsigned long long*>(ws);
  auto* decayed = reinterpret_cast<float*>(ws + aligned(sizeof(unsigned long long)));
  // decay32 = 1 - beta32 in float32, as the CPU core and the reference compute it.
  const float decay = 1.0f - beta;
  SCALECOM_TRY(cudaMemsetAsync(nonfinite, 0, sizeof(unsigned long long), stream));
  SCALECOM_TRY(cudaMemsetAsync(selected_nonfinite, 0, sizeof(unsigned long long), stream));
  if (k > 0) {
    gather_kernel<G><<<blocks_for(k), kThreads, 0, stream>>>(m, g, idx, k, beta, decay, values,
                                                             decayed, selected_nonfinite);
    SCALECOM_LAUNCHED();
  }
  if (n > 0) {
    update_kernel<G><<<blocks_for(n), kThreads, 0, stream>>>(m, g, n, beta, nonfinite);
    SCALECOM_LAUNCHED();
  }
  if (k > 0) {
    restore_kernel<<<blocks_for(k), kThreads, 0, stream>>>(m, idx, k, decayed);
    SCALECOM_LAUNCHED();
  }
  finish_count<<<1, 1, 0, stream>>>(nonfinite, selected_nonfinite);
  SCALECOM_LAUNCHED();
  return cudaSuccess;
}

}  // namespace

extern "C" {

int scalecom_cuda_select_workspace_bytes(int64_t numel, int64_t k, size_t* bytes) {
  if (!valid(numel, k) || bytes == nullptr) return cudaErrorInvalidValue;
  SelectLayout lay;
  const int err = select_layout(numel, k, &lay);
  if (err == cudaSuccess) *bytes = lay.total;
  return err;
}

int scalecom_cuda_select_topk(const float* memory, const void* grad, int grad_type,
                              int64_t numel, int64_t k, int32_t* indices, void* workspace,
                              size_t workspace_bytes, void* stream_ptr) {
  if (!valid(numel, k)) return cudaErrorInvalidValue;
  if (k == 0) return cudaSuccess;
  SelectLayout lay;
  const int err = select_layout(numel, k, &lay);
  if (err != cudaSuccess) return err;
  if (workspace == nullptr || workspace_bytes < lay.total) return cudaErrorInvalidValue;
  auto* ws = static_cast<char*>(workspace);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (grad_type) {
    case SCALECOM_F32:
      return select_typed(memory, static_cast<const float*>(grad), numel, k, indices, ws, lay,
                          stream);
    case SCALECOM_F16:
      return select_typed(memory, static_cast<const __half*>(grad), numel, k, indices, ws, lay,
                          stream);
    case SCALECOM_BF16:
      return select_typed(memory, static_cast<const __nv_bfloat16*>(grad), numel, k, indices,
                          ws, lay, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

int scalecom_cuda_gather_update_workspace_bytes(int64_t k, size_t* bytes) {
  if (k < 0 || bytes == nullptr) return cudaErrorInvalidValue;
  *bytes = aligned(sizeof(unsigned long long)) + aligned(static_cast<size_t>(k) * sizeof(float));
  return cudaSuccess;
}

int scalecom_cuda_gather_update(float* memory, const void* grad, int grad_type, int64_t numel,
                                const int32_t* indices, int64_t k, float beta, float* values,
                                unsigned long long* nonfinite, void* workspace,
                                size_t workspace_bytes, void* stream_ptr) {
  size_t need = 0;
  if (!valid(numel, k) || !(beta > 0.0f && beta <= 1.0f) || nonfinite == nullptr ||
      scalecom_cuda_gather_update_workspace_bytes(k, &need) != cudaSuccess ||
      workspace == nullptr || workspace_bytes < need) {
    return cudaErrorInvalidValue;
  }
  auto* ws = static_cast<char*>(workspace);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (grad_type) {
    case SCALECOM_F32:
      return gather_update_typed(memory, static_cast<const float*>(grad), numel, indices, k,
                                 beta, values, nonfinite, ws, stream);
    case SCALECOM_F16:
      return gather_update_typed(memory, static_cast<const __half*>(grad), numel, indices, k,
                                 beta, values, nonfinite, ws, stream);
    case SCALECOM_BF16:
      return gather_update_typed(memory, static_cast<const __nv_bfloat16*>(grad), numel,
                                 indices, k, beta, values, nonfinite, ws, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

int scalecom_cuda_scatter(const int32_t* indices, const float* values, int64_t k, int64_t numel,
                          float* out, void* stream_ptr) {
  if (!valid(numel, k)) return cudaErrorInvalidValue;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  SCALECOM_TRY(cudaMemsetAsync(out, 0, static_cast<size_t>(numel) * sizeof(float), stream));
  if (k > 0) {
    scatter_kernel<<<blocks_for(k), kThreads, 0, stream>>>(indices, values, k, out);
    SCALECOM_LAUNCHED();
  }
  return cudaSuccess;
}

const char* scalecom_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

}  // extern "C"
