// The schemas of the tensor operations of torch.ops.scalecom, in one place:
// ops.cc defines them (CPU kernels there, CUDA kernels in cuda_ops.cc), and
// the host-double build of cuda_ops.cc defines them again under its own
// namespace (tests/abi_double).
#pragma once

#include <torch/library.h>

namespace scalecom_torch {

inline void define_tensor_ops(torch::Library& m) {
  m.def("select_topk(Tensor memory, Tensor grad, int k) -> Tensor");
  // Returns the gathered values and how many non-finite updates the memory
  // refused, as a one-element int64 tensor on the memory's device: on a GPU,
  // an int would wait for the kernels at every tensor.
  m.def("gather_update_(Tensor(a!) memory, Tensor grad, Tensor indices, float beta) "
        "-> (Tensor, Tensor)");
  m.def("scatter(Tensor indices, Tensor values, int numel) -> Tensor");
}

}  // namespace scalecom_torch
