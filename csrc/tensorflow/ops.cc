// TensorFlow custom ops over the ScaleCom core (CPU), loaded with
// tf.load_op_library by horovod_scalecom.tensorflow. The same core functions
// as the torch binding, so both frontends give the same bits.
#include <cstring>
#include <stdexcept>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#include "../core/clip.h"
#include "../core/scalecom.h"
#include "checks.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::InferenceContext;

int threads(OpKernelContext* ctx) {
  return ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
}

// Runs a core call; its std::invalid_argument becomes a TF InvalidArgument.
template <typename F>
void guarded(OpKernelContext* ctx, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    ctx->CtxFailure(InvalidArgument("scalecom: ", e.what()));
  }
}

using scalecom_tf::check_pair;

class SelectTopkOp : public OpKernel {
 public:
  explicit SelectTopkOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &k_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& memory = ctx->input(0);
    const Tensor& grad = ctx->input(1);
    if (!check_pair(ctx, memory, grad)) return;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({k_}), &out));
    guarded(ctx, [&] {
      scalecom::select_topk(memory.flat<float>().data(), grad.flat<float>().data(),
                            memory.NumElements(), k_, out->flat<int32_t>().data(),
                            threads(ctx));
    });
  }

 private:
  int64_t k_ = 0;
};

class GatherUpdateOp : public OpKernel {
 public:
  explicit GatherUpdateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("beta", &beta_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& memory = ctx->input(0);
    const Tensor& grad = ctx->input(1);
    const Tensor& indices = ctx->input(2);
    if (!check_pair(ctx, memory, grad)) return;
    OP_REQUIRES(ctx, indices.dims() == 1,
                InvalidArgument("scalecom: indices must be 1-D"));
    Tensor* values = nullptr;
    Tensor* new_memory = nullptr;
    Tensor* kept = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, indices.shape(), &values));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, memory.shape(), &new_memory));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({}), &kept));
    float* m = new_memory->flat<float>().data();
    std::memcpy(m, memory.flat<float>().data(), sizeof(float) * memory.NumElements());
    kept->scalar<int64_t>()() = 0;
    guarded(ctx, [&] {
      kept->scalar<int64_t>()() = scalecom::gather_and_update(
          m, grad.flat<float>().data(), memory.NumElements(), indices.flat<int32_t>().data(),
          indices.NumElements(), beta_, values->flat<float>().data(), threads(ctx));
    });
  }

 private:
  float beta_ = 0.1f;
};

class ScatterOp : public OpKernel {
 public:
  explicit ScatterOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("numel", &numel_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& indices = ctx->input(0);
    const Tensor& values = ctx->input(1);
    OP_REQUIRES(ctx, indices.NumElements() == values.NumElements(),
                InvalidArgument("scalecom: ", values.NumElements(), " values for ",
                                indices.NumElements(), " indices"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({numel_}), &out));
    guarded(ctx, [&] {
      scalecom::scatter(indices.flat<int32_t>().data(), values.flat<float>().data(),
                        indices.NumElements(), out->flat<float>().data(), numel_, threads(ctx));
    });
  }

 private:
  int64_t numel_ = 0;
};

// The relative clip: inputs grad (float32), level, factor, rho (float64
// scalars, so that they are the very doubles torch passes); outputs the
// clipped gradient, the new level and the norm before clipping.
class RelativeClipOp : public OpKernel {
 public:
  explicit RelativeClipOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& grad = ctx->input(0);
    for (int i = 1; i < 4; ++i) {
      OP_REQUIRES(ctx, tensorflow::TensorShapeUtils::IsScalar(ctx->input(i).shape()),
                  InvalidArgument("scalecom: level, factor and rho must be scalars"));
    }
    double level = ctx->input(1).scalar<double>()();
    double factor = ctx->input(2).scalar<double>()();
    double rho = ctx->input(3).scalar<double>()();
    const float* g = grad.flat<float>().data();
    int64_t n = grad.NumElements();
    scalecom::ClipStep step = scalecom::relative_clip_step(
        scalecom::sum_squares(g, n, threads(ctx)), level, factor, rho);
    Tensor* out = nullptr;
    Tensor* new_level = nullptr;
    Tensor* norm = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, grad.shape(), &out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &new_level));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({}), &norm));
    float* o = out->flat<float>().data();
    if (step.scale == 1.0f) {
      std::memcpy(o, g, sizeof(float) * n);
    } else {
      for (int64_t i = 0; i < n; ++i) o[i] = g[i] * step.scale;
    }
    new_level->scalar<double>()() = step.level;
    norm->scalar<double>()() = step.norm;
  }
};

}  // namespace

REGISTER_OP("ScalecomSelectTopk")
    .Input("memory: float")
    .Input("grad: float")
    .Attr("k: int >= 0")
    .Output("indices: int32")
    .SetShapeFn([](InferenceContext* c) {
      int64_t k;
      TF_RETURN_IF_ERROR(c->GetAttr("k", &k));
      c->set_output(0, c->Vector(k));
      return absl::OkStatus();
    })
    .Doc("Indices of the k largest |memory + grad|, ties to the lower index, ascending.");

REGISTER_OP("ScalecomGatherUpdate")
    .Input("memory: float")
    .Input("grad: float")
    .Input("indices: int32")
    .Attr("beta: float")
    .Output("values: float")
    .Output("new_memory: float")
    .Output("nonfinite_kept: int64")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(2));
      c->set_output(1, c->input(0));
      c->set_output(2, c->Scalar());
      return absl::OkStatus();
    })
    .Doc("values = (memory + grad)[indices]; new_memory = the low-pass update, which "
         "refuses non-finite results; nonfinite_kept counts those entries.");

REGISTER_OP("ScalecomScatter")
    .Input("indices: int32")
    .Input("values: float")
    .Attr("numel: int >= 0")
    .Output("dense: float")
    .SetShapeFn([](InferenceContext* c) {
      int64_t numel;
      TF_RETURN_IF_ERROR(c->GetAttr("numel", &numel));
      c->set_output(0, c->Vector(numel));
      return absl::OkStatus();
    })
    .Doc("A dense vector of numel zeros with values at indices.");

REGISTER_OP("ScalecomRelativeClip")
    .Input("grad: float")
    .Input("level: double")
    .Input("factor: double")
    .Input("rho: double")
    .Output("clipped: float")
    .Output("new_level: double")
    .Output("norm: double")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->Scalar());
      c->set_output(2, c->Scalar());
      return absl::OkStatus();
    })
    .Doc("grad scaled to norm <= factor * level (csrc/core/clip.h), the new level and the "
         "norm before clipping.");

REGISTER_KERNEL_BUILDER(Name("ScalecomSelectTopk").Device(tensorflow::DEVICE_CPU), SelectTopkOp);
REGISTER_KERNEL_BUILDER(Name("ScalecomGatherUpdate").Device(tensorflow::DEVICE_CPU),
                        GatherUpdateOp);
REGISTER_KERNEL_BUILDER(Name("ScalecomScatter").Device(tensorflow::DEVICE_CPU), ScatterOp);
REGISTER_KERNEL_BUILDER(Name("ScalecomRelativeClip").Device(tensorflow::DEVICE_CPU),
                        RelativeClipOp);
