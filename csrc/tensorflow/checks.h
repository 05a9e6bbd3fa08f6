// Input checks shared by the CPU (ops.cc) and GPU (gpu_kernels.cc) kernels of
// the ScaleCom TensorFlow ops, so both refuse the same inputs with the same words.
#pragma once

#include "tensorflow/core/framework/op_kernel.h"

namespace scalecom_tf {

// memory must be 1-D with as many elements as the gradient.
inline bool check_pair(tensorflow::OpKernelContext* ctx, const tensorflow::Tensor& memory,
                       const tensorflow::Tensor& grad) {
  using tensorflow::errors::InvalidArgument;
  if (memory.dims() != 1) {
    ctx->CtxFailure(InvalidArgument("scalecom: memory must be 1-D, got shape ",
                                    memory.shape().DebugString()));
    return false;
  }
  if (grad.NumElements() != memory.NumElements()) {
    ctx->CtxFailure(InvalidArgument("scalecom: gradient has ", grad.NumElements(),
                                    " elements but its memory has ", memory.NumElements()));
    return false;
  }
  return true;
}

}  // namespace scalecom_tf
