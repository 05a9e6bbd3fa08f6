// The CUDA kernels of torch.ops.scalecom (schemas in schema.h): the CPU
// core's three tensor operations for tensors on a GPU, over the C ABI of
// csrc/cuda (libscalecom_cuda.so, which this library then links), registered
// for torch's CUDA dispatch key, so one call site serves both devices.
// setup.py compiles this file only beside that library.
//
// Work is enqueued on the current stream of the tensor's device, as torch's
// own ops do. The device guard and the stream come through c10's
// device-generic interface, so this file needs no CUDA headers and compiles
// against any build of torch.
//
// Built with SCALECOM_HOST_DOUBLE (tests/abi_double), the same code registers
// for CPU tensors as torch.ops.scalecom_host, over the C ABI implemented on
// host memory: machines without a GPU test everything up to the C ABI
// (argument order, dtype codes, the workspace protocol, the counter).
//
// Status: setup.py compiles and links it here (TensorFlow's wheel has CUDA),
// and the tests check its registration and run its host-double build; not yet
// run on a GPU.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/StringUtil.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "../cuda/scalecom_cuda.h"
#include "schema.h"

#ifdef SCALECOM_HOST_DOUBLE
#define SCALECOM_OPS scalecom_host
#define SCALECOM_DEVICE CPU
#else
#define SCALECOM_OPS scalecom
#define SCALECOM_DEVICE CUDA
#endif

namespace {

// The device's current stream as a cudaStream_t; none for the host double.
void* current_stream(const at::Device& device) {
  if (!device.is_cuda()) return nullptr;
  return c10::impl::VirtualGuardImpl(device.type()).getStream(device).native_handle();
}

template <typename... What>
void check(int code, const What&... what) {
  TORCH_CHECK(code == 0, "scalecom CUDA ", c10::str(what...), ": ",
              scalecom_cuda_error_string(code), " (error ", code, ")");
}

// The C ABI's code for the gradient's dtype, after the checks the kernels
// cannot make on device pointers.
int grad_type(const at::Tensor& memory, const at::Tensor& grad) {
  TORCH_CHECK_VALUE(memory.scalar_type() == at::kFloat && memory.is_contiguous() &&
                        memory.dim() == 1,
                    "scalecom: memory must be a contiguous 1-D float32 tensor");
  TORCH_CHECK_VALUE(grad.numel() == memory.numel(), "scalecom: gradient has ", grad.numel(),
                    " elements but its memory has ", memory.numel());
  TORCH_CHECK_VALUE(grad.device() == memory.device(), "scalecom: gradient on ", grad.device(),
                    ", its memory on ", memory.device());
  switch (grad.scalar_type()) {
    case at::kFloat: return SCALECOM_F32;
    case at::kHalf: return SCALECOM_F16;
    case at::kBFloat16: return SCALECOM_BF16;
    default:
      TORCH_CHECK_VALUE(false, "scalecom: the CUDA kernels take float32, float16 or bfloat16 "
                        "gradients, got ", grad.scalar_type());
  }
}

void check_indices(const at::Tensor& indices, const at::Device& device) {
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kInt && indices.dim() == 1 &&
                        indices.is_contiguous() && indices.device() == device,
                    "scalecom: indices must be a contiguous 1-D int32 tensor on ", device);
}

// From torch's caching allocator: no cudaMalloc per call.
at::Tensor scratch(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                   like.options().dtype(at::kByte));
}

at::Tensor select_topk(const at::Tensor& memory, const at::Tensor& grad, int64_t k) {
  const int type = grad_type(memory, grad);
  const at::Tensor g = grad.reshape({-1}).contiguous();
  const int64_t numel = memory.numel();
  // The CPU op's ValueErrors, before the C ABI's bare "invalid argument".
  TORCH_CHECK_VALUE(k >= 0 && k <= numel, "scalecom: select_topk: k=", k,
                    " outside [0, numel=", numel, "]");
  c10::DeviceGuard guard(memory.device());
  size_t bytes = 0;
  check(scalecom_cuda_select_workspace_bytes(numel, k, &bytes),
        "select_workspace_bytes(numel=", numel, ", k=", k, ")");
  at::Tensor workspace = scratch(bytes, memory);
  at::Tensor indices = at::empty({k}, memory.options().dtype(at::kInt));
  check(scalecom_cuda_select_topk(memory.data_ptr<float>(), g.data_ptr(), type, numel, k,
                                  indices.data_ptr<int32_t>(), workspace.data_ptr(), bytes,
                                  current_stream(memory.device())),
        "select_topk(numel=", numel, ", k=", k, ")");
  return indices;
}

std::tuple<at::Tensor, at::Tensor> gather_update_(at::Tensor memory, const at::Tensor& grad,
                                                  const at::Tensor& indices, double beta) {
  const int type = grad_type(memory, grad);
  check_indices(indices, memory.device());
  const at::Tensor g = grad.reshape({-1}).contiguous();
  const int64_t numel = memory.numel();
  const int64_t k = indices.numel();
  TORCH_CHECK_VALUE(k <= numel, "scalecom: gather_update_: k=", k, " outside [0, numel=",
                    numel, "]");
  const float beta32 = static_cast<float>(beta);
  TORCH_CHECK_VALUE(beta32 > 0.0f && beta32 <= 1.0f,
                    "scalecom: gather_update_: beta must lie in (0, 1], got ", beta);
  // The indices are device data: their order and range are the caller's
  // (select_topk's) to keep; checking them here would wait for the GPU.
  c10::DeviceGuard guard(memory.device());
  size_t bytes = 0;
  check(scalecom_cuda_gather_update_workspace_bytes(k, &bytes),
        "gather_update_workspace_bytes(k=", k, ")");
  at::Tensor workspace = scratch(bytes, memory);
  at::Tensor values = at::empty({k}, memory.options());
  at::Tensor refused = at::empty({1}, memory.options().dtype(at::kLong));
  check(scalecom_cuda_gather_update(
            memory.data_ptr<float>(), g.data_ptr(), type, numel, indices.data_ptr<int32_t>(), k,
            beta32, values.data_ptr<float>(),
            reinterpret_cast<unsigned long long*>(refused.data_ptr<int64_t>()),
            workspace.data_ptr(), bytes, current_stream(memory.device())),
        "gather_update(numel=", numel, ", k=", k, ")");
  return {values, refused};
}

at::Tensor scatter(const at::Tensor& indices, const at::Tensor& values, int64_t numel) {
  check_indices(indices, values.device());
  TORCH_CHECK_VALUE(values.scalar_type() == at::kFloat && values.is_contiguous(),
                    "scalecom: values must be a contiguous float32 tensor");
  TORCH_CHECK_VALUE(values.numel() == indices.numel(), "scalecom: ", values.numel(),
                    " values for ", indices.numel(), " indices");
  c10::DeviceGuard guard(values.device());
  at::Tensor out = at::empty({numel}, values.options());
  check(scalecom_cuda_scatter(indices.data_ptr<int32_t>(), values.data_ptr<float>(),
                              indices.numel(), numel, out.data_ptr<float>(),
                              current_stream(values.device())),
        "scatter(numel=", numel, ", k=", indices.numel(), ")");
  return out;
}

}  // namespace

#ifdef SCALECOM_HOST_DOUBLE
TORCH_LIBRARY(scalecom_host, m) { scalecom_torch::define_tensor_ops(m); }
#endif

TORCH_LIBRARY_IMPL(SCALECOM_OPS, SCALECOM_DEVICE, m) {
  m.impl("select_topk", &select_topk);
  m.impl("gather_update_", &gather_update_);
  m.impl("scatter", &scatter);
}
