// GPU kernels of the ScaleCom TensorFlow ops (declared in ops.cc), over the
// C ABI of csrc/cuda (libscalecom_cuda.so, which this library links). setup.py
// compiles this file only when it builds that library, so an op library
// without it has no GPU kernels and TensorFlow runs the ops on the CPU.
//
// Indices are int32, and TensorFlow keeps int32 tensors of GPU kernels in
// host memory (MTypeFromDType); the kernels declare that (HostMemory) and
// copy the k indices across, k being 1% or less of the tensor. The memory,
// gradient and values stay on the device. Everything runs on the op's
// compute stream, which this library obtains from StreamExecutor; the select
// kernel waits for its indices (the leader hands them to Horovod next).
//
// Status: compiled and loaded by the test suite; not yet run on a GPU.
#include <cstdint>
#include <string>

#include "tensorflow/compiler/xla/stream_executor/device_memory.h"
#include "tensorflow/compiler/xla/stream_executor/stream.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "checks.h"

#include "../core/scalecom.h"
#include "../cuda/scalecom_cuda.h"

namespace {

using stream_executor::DeviceMemoryBase;
using stream_executor::Stream;
using tensorflow::AllocatorAttributes;
using tensorflow::DataType;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::Internal;
using tensorflow::errors::InvalidArgument;

Stream* stream_of(OpKernelContext* ctx) { return ctx->op_device_context()->stream(); }

void* cuda_stream(OpKernelContext* ctx) {
  return stream_of(ctx)->platform_specific_handle().stream;
}

bool ok(OpKernelContext* ctx, int code, const char* what) {
  if (code == 0) return true;
  ctx->CtxFailure(Internal("scalecom CUDA ", what, ": ", scalecom_cuda_error_string(code)));
  return false;
}

bool stream_ok(OpKernelContext* ctx, Stream& stream, const char* what) {
  if (stream.ok()) return true;
  ctx->CtxFailure(Internal("scalecom: ", what, " failed on the GPU stream"));
  return false;
}

template <typename T>
DeviceMemoryBase device_memory(const Tensor& t) {
  return DeviceMemoryBase(const_cast<T*>(t.flat<T>().data()), t.NumElements() * sizeof(T));
}

// A device buffer of `bytes` bytes (at least one) from TensorFlow's allocator.
bool scratch(OpKernelContext* ctx, size_t bytes, Tensor* out) {
  const int64_t n = static_cast<int64_t>(bytes > 0 ? bytes : 1);
  return ctx->allocate_temp(tensorflow::DT_UINT8, TensorShape({n}), out).ok();
}

// The host-memory indices input, copied into a device buffer on the op's stream.
bool indices_to_device(OpKernelContext* ctx, const Tensor& host, Tensor* device) {
  if (!ctx->allocate_temp(tensorflow::DT_INT32, host.shape(), device).ok()) return false;
  if (host.NumElements() == 0) return true;
  DeviceMemoryBase dst = device_memory<int32_t>(*device);
  Stream& stream = *stream_of(ctx);
  stream.ThenMemcpy(&dst, host.flat<int32_t>().data(), host.NumElements() * sizeof(int32_t));
  return stream_ok(ctx, stream, "copying the indices to the GPU");
}

using scalecom_tf::check_pair;

class SelectTopkGpuOp : public OpKernel {
 public:
  explicit SelectTopkGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &k_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& memory = ctx->input(0);
    const Tensor& grad = ctx->input(1);
    if (!check_pair(ctx, memory, grad)) return;
    const int64_t numel = memory.NumElements();
    OP_REQUIRES(ctx, k_ <= numel,
                InvalidArgument("scalecom: k = ", k_, " exceeds the ", numel, " elements"));
    AllocatorAttributes pinned;
    pinned.set_on_host(true);
    pinned.set_gpu_compatible(true);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({k_}), &out, pinned));
    if (k_ == 0) return;
    size_t bytes = 0;
    if (!ok(ctx, scalecom_cuda_select_workspace_bytes(numel, k_, &bytes), "workspace")) return;
    Tensor workspace, indices;
    OP_REQUIRES(ctx, scratch(ctx, bytes, &workspace), Internal("scalecom: no GPU workspace"));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT32, TensorShape({k_}), &indices));
    if (!ok(ctx, scalecom_cuda_select_topk(memory.flat<float>().data(), grad.flat<float>().data(),
                                           SCALECOM_F32, numel, k_,
                                           indices.flat<int32_t>().data(),
                                           workspace.flat<uint8_t>().data(), bytes,
                                           cuda_stream(ctx)),
            "select_topk")) {
      return;
    }
    Stream& stream = *stream_of(ctx);
    stream.ThenMemcpy(out->flat<int32_t>().data(), device_memory<int32_t>(indices),
                      k_ * sizeof(int32_t));
    // The indices are read on the host (Horovod's broadcast) right after.
    OP_REQUIRES(ctx, stream.BlockHostUntilDone().ok() && stream.ok(),
                Internal("scalecom: select_topk failed on the GPU stream"));
  }

 private:
  int64_t k_ = 0;
};

class GatherUpdateGpuOp : public OpKernel {
 public:
  explicit GatherUpdateGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("beta", &beta_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& memory = ctx->input(0);
    const Tensor& grad = ctx->input(1);
    const Tensor& host_indices = ctx->input(2);
    if (!check_pair(ctx, memory, grad)) return;
    OP_REQUIRES(ctx, host_indices.dims() == 1,
                InvalidArgument("scalecom: indices must be 1-D"));
    const int64_t numel = memory.NumElements();
    const int64_t k = host_indices.NumElements();
    OP_REQUIRES(ctx, k <= numel,
                InvalidArgument("scalecom: ", k, " indices for ", numel, " elements"));
    // The kernel trusts its indices (device data); check them here, O(k) on the host.
    const int32_t* idx = host_indices.flat<int32_t>().data();
    const int64_t bad = scalecom::first_bad_index(idx, k, 0, numel);
    OP_REQUIRES(ctx, bad < 0,
                InvalidArgument("scalecom: indices must be ascending, unique and in [0, ", numel,
                                "); entry ", bad, " is ", bad < 0 ? 0 : idx[bad]));
    Tensor* values = nullptr;
    Tensor* new_memory = nullptr;
    Tensor* kept = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, host_indices.shape(), &values));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, memory.shape(), &new_memory));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({}), &kept));
    Tensor indices;
    OP_REQUIRES(ctx, indices_to_device(ctx, host_indices, &indices),
                Internal("scalecom: could not stage the indices on the GPU"));
    Stream& stream = *stream_of(ctx);
    DeviceMemoryBase dst = device_memory<float>(*new_memory);
    stream.ThenMemcpy(&dst, device_memory<float>(memory), numel * sizeof(float));
    if (!stream_ok(ctx, stream, "copying the memory")) return;
    size_t bytes = 0;
    if (!ok(ctx, scalecom_cuda_gather_update_workspace_bytes(k, &bytes), "workspace")) return;
    Tensor workspace;
    OP_REQUIRES(ctx, scratch(ctx, bytes, &workspace), Internal("scalecom: no GPU workspace"));
    ok(ctx, scalecom_cuda_gather_update(
                new_memory->flat<float>().data(), grad.flat<float>().data(), SCALECOM_F32, numel,
                indices.flat<int32_t>().data(), k, beta_, values->flat<float>().data(),
                reinterpret_cast<unsigned long long*>(kept->flat<int64_t>().data()),
                workspace.flat<uint8_t>().data(), bytes, cuda_stream(ctx)),
       "gather_update");
  }

 private:
  float beta_ = 0.1f;
};

class ScatterGpuOp : public OpKernel {
 public:
  explicit ScatterGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("numel", &numel_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& host_indices = ctx->input(0);
    const Tensor& values = ctx->input(1);
    const int64_t k = host_indices.NumElements();
    OP_REQUIRES(ctx, k == values.NumElements(),
                InvalidArgument("scalecom: ", values.NumElements(), " values for ", k,
                                " indices"));
    const int32_t* idx = host_indices.flat<int32_t>().data();
    for (int64_t i = 0; i < k; ++i) {
      OP_REQUIRES(ctx, idx[i] >= 0 && idx[i] < numel_,
                  InvalidArgument("scalecom: index ", idx[i], " outside [0, ", numel_, ")"));
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({numel_}), &out));
    Tensor indices;
    OP_REQUIRES(ctx, indices_to_device(ctx, host_indices, &indices),
                Internal("scalecom: could not stage the indices on the GPU"));
    ok(ctx, scalecom_cuda_scatter(indices.flat<int32_t>().data(), values.flat<float>().data(), k,
                                  numel_, out->flat<float>().data(), cuda_stream(ctx)),
       "scatter");
  }

 private:
  int64_t numel_ = 0;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("ScalecomSelectTopk").Device(tensorflow::DEVICE_GPU)
                            .HostMemory("indices"),
                        SelectTopkGpuOp);
REGISTER_KERNEL_BUILDER(Name("ScalecomGatherUpdate").Device(tensorflow::DEVICE_GPU)
                            .HostMemory("indices"),
                        GatherUpdateGpuOp);
REGISTER_KERNEL_BUILDER(Name("ScalecomScatter").Device(tensorflow::DEVICE_GPU)
                            .HostMemory("indices"),
                        ScatterGpuOp);
