// Where one tensor of the ring lives: the three things the ring engine asks
// of a tensor's memory and gradient, on the host (the CPU core) or on a GPU
// (the CUDA kernels, staged through host memory).
//
// Device buffers: the memory, gradient and output stay on the GPU; only the
// k-sized index and value sets cross to the host, where MPI sends them and
// the ring's sums are taken in the same order as on the CPU path, so both
// give the same bits. MPI never sees a device pointer, so any MPI works; a
// CUDA-aware MPI would save the k-sized copies, not the host additions, and
// is not used.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "../cuda/scalecom_cuda.h"
#include "ring.h"

namespace scalecom {

// The C ABI of csrc/cuda/scalecom_cuda.h as function pointers, handed over
// by the frontend that loaded the library (the ring extension does not link
// CUDA, so it loads on machines without it).
struct DeviceKernels {
  decltype(&scalecom_cuda_select_workspace_bytes) select_workspace_bytes = nullptr;
  decltype(&scalecom_cuda_select_topk) select_topk = nullptr;
  decltype(&scalecom_cuda_gather_update_workspace_bytes) gather_update_workspace_bytes = nullptr;
  decltype(&scalecom_cuda_gather_update) gather_update = nullptr;
  decltype(&scalecom_cuda_scatter) scatter = nullptr;
  decltype(&scalecom_cuda_gather) gather = nullptr;
  decltype(&scalecom_cuda_set_device) set_device = nullptr;
  decltype(&scalecom_cuda_copy) copy = nullptr;
  decltype(&scalecom_cuda_error_string) error_string = nullptr;

  bool complete() const {
    return select_workspace_bytes && select_topk && gather_update_workspace_bytes &&
           gather_update && scatter && gather && set_device && copy && error_string;
  }
};

// numpy.array_split bounds of n chunks, and k per chunk.
void chunk_plan(int64_t numel, int64_t n, double ratio, std::vector<int64_t>* bounds,
                std::vector<int64_t>* k);

class Buffers {
 public:
  virtual ~Buffers() = default;
  // idx = the top-k |m + g| within [lo, hi) as tensor indices, ascending;
  // values = m + g there.
  virtual void select(int64_t lo, int64_t hi, int64_t k, int32_t* idx, float* values) = 0;
  // values[q] = values[q] + (m + g)[idx[q]]: one hop of the reduce-scatter.
  virtual void accumulate(const int32_t* idx, int64_t k, float* values) = 0;
  // out = the dense mean (zero off idx), then the low-pass memory update over
  // idx (all chunks' sets, ascending). Returns the refused non-finite updates.
  virtual int64_t finish(const std::vector<int32_t>& idx, const std::vector<float>& means,
                         float beta) = 0;
};

std::unique_ptr<Buffers> host_buffers(const RingTensor& t, int num_threads);
std::unique_ptr<Buffers> device_buffers(const RingTensor& t, const DeviceKernels& kernels,
                                        int64_t n, double ratio);

// Scratch bytes a device tensor of numel elements needs on its GPU.
size_t device_scratch_bytes(const DeviceKernels& kernels, int64_t numel, int64_t n,
                            double ratio);

}  // namespace scalecom
