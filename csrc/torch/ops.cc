// torch.library registration of the ScaleCom core: the schemas and the CPU
// kernels. The ops show up as torch.ops.scalecom.*; their CUDA kernels are in
// cuda_ops.cc, compiled in when setup.py builds the CUDA library. The Python
// module only exists so that importing horovod_scalecom._torch_ops loads
// this library.
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <stdexcept>
#include <tuple>

#include "../core/clip.h"
#include "../core/scalecom.h"
#include "schema.h"

namespace {

int threads() { return at::get_num_threads(); }

void check_cpu_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), "scalecom: ", what, " must be a CPU tensor, got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "scalecom: ", what,
              " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "scalecom: ", what, " must be contiguous");
}

// Gradients of any floating dtype are widened to float32 (memory is float32).
at::Tensor as_f32(const at::Tensor& grad, const at::Tensor& memory) {
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()),
              "scalecom: gradient must be floating point, got ", grad.scalar_type());
  TORCH_CHECK(grad.numel() == memory.numel(), "scalecom: gradient has ", grad.numel(),
              " elements but its memory has ", memory.numel());
  return grad.reshape({-1}).to(at::kFloat).contiguous();
}

template <typename F>
auto translate_errors(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, "scalecom: ", e.what());
  }
}

at::Tensor select_topk(const at::Tensor& memory, const at::Tensor& grad, int64_t k) {
  check_cpu_float(memory, "memory");
  at::Tensor g = as_f32(grad, memory);
  at::Tensor out = at::empty({k}, memory.options().dtype(at::kInt));
  translate_errors([&] {
    scalecom::select_topk(memory.data_ptr<float>(), g.data_ptr<float>(), memory.numel(), k,
                          out.data_ptr<int32_t>(), threads());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gather_update_(at::Tensor memory, const at::Tensor& grad,
                                                  const at::Tensor& indices, double beta) {
  check_cpu_float(memory, "memory");
  at::Tensor g = as_f32(grad, memory);
  TORCH_CHECK(indices.scalar_type() == at::kInt && indices.dim() == 1 &&
                  indices.is_contiguous() && indices.device().is_cpu(),
              "scalecom: indices must be a contiguous 1-D int32 CPU tensor");
  at::Tensor values = at::empty({indices.numel()}, memory.options());
  int64_t kept = 0;
  translate_errors([&] {
    kept = scalecom::gather_and_update(memory.data_ptr<float>(), g.data_ptr<float>(),
                                       memory.numel(), indices.data_ptr<int32_t>(),
                                       indices.numel(), static_cast<float>(beta),
                                       values.data_ptr<float>(), threads());
  });
  return {values, at::full({1}, kept, memory.options().dtype(at::kLong))};
}

at::Tensor scatter(const at::Tensor& indices, const at::Tensor& values, int64_t numel) {
  TORCH_CHECK(indices.scalar_type() == at::kInt && indices.is_contiguous() &&
                  indices.device().is_cpu(),
              "scalecom: indices must be a contiguous int32 CPU tensor");
  check_cpu_float(values, "values");
  TORCH_CHECK(values.numel() == indices.numel(), "scalecom: ", values.numel(),
              " values for ", indices.numel(), " indices");
  at::Tensor out = at::empty({numel}, values.options());
  translate_errors([&] {
    scalecom::scatter(indices.data_ptr<int32_t>(), values.data_ptr<float>(), indices.numel(),
                      out.data_ptr<float>(), numel, threads());
  });
  return out;
}

// The core's sum of squares (csrc/core/clip.h order) of a float32 tensor.
double sum_squares(const at::Tensor& x) {
  check_cpu_float(x, "tensor");
  return scalecom::sum_squares(x.data_ptr<float>(), x.numel(), threads());
}

// One step of the relative clip from a gradient's sum of squares (sum_squares
// above on the CPU, torch's on a GPU): (norm, new level, scale).
std::tuple<double, double, double> clip_step(double sum_sq, double level, double factor,
                                             double rho) {
  scalecom::ClipStep step = scalecom::relative_clip_step(sum_sq, level, factor, rho);
  return {step.norm, step.level, step.scale};
}

int64_t num_selected(int64_t numel, double ratio) {
  return translate_errors([&] { return scalecom::num_selected(numel, ratio); });
}

}  // namespace

TORCH_LIBRARY(scalecom, m) {
  scalecom_torch::define_tensor_ops(m);
  m.def("num_selected(int numel, float ratio) -> int", &num_selected);
  m.def("clip_step(float sum_sq, float level, float factor, float rho) -> (float, float, float)",
        &clip_step);
  m.def("sum_squares(Tensor x) -> float");
}

TORCH_LIBRARY_IMPL(scalecom, CPU, m) {
  m.impl("select_topk", &select_topk);
  m.impl("gather_update_", &gather_update_);
  m.impl("scatter", &scatter);
  m.impl("sum_squares", &sum_squares);
}

#ifndef SCALECOM_WITH_CUDA
#define SCALECOM_WITH_CUDA 0
#endif

// A bare CPython module: importing it is what registers the ops above.
// cuda_kernels says whether cuda_ops.cc is in (setup.py defines SCALECOM_WITH_CUDA).
PyMODINIT_FUNC PyInit__torch_ops(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_torch_ops",
                            "Registers torch.ops.scalecom (the ScaleCom core).", -1,
                            nullptr, nullptr, nullptr, nullptr, nullptr};
  PyObject* module = PyModule_Create(&def);
  if (module != nullptr &&
      PyModule_AddIntConstant(module, "cuda_kernels", SCALECOM_WITH_CUDA) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
