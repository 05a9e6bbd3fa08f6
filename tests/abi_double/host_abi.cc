// A host-memory implementation of csrc/cuda/scalecom_cuda.h over the CPU core,
// for tests only: it lets the machines without a GPU exercise everything
// between a frontend and the C ABI (argument order and types, dtype codes, the
// workspace protocol, the non-finite counter) with CPU tensors. It says
// nothing about the kernels themselves; tests/gpu compares those with the CPU
// core on a GPU.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "../../csrc/core/scalecom.h"
#include "../../csrc/cuda/scalecom_cuda.h"

namespace {

constexpr int kInvalid = 1;  // cudaErrorInvalidValue

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    float f = static_cast<float>(man) * (1.0f / 16777216.0f);  // subnormal: man * 2^-24
    return sign ? -f : f;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

bool widen(const void* grad, int type, int64_t n, std::vector<float>* out) {
  out->resize(n);
  const auto* h = static_cast<const uint16_t*>(grad);
  switch (type) {
    case SCALECOM_F32: std::memcpy(out->data(), grad, n * sizeof(float)); return true;
    case SCALECOM_F16: for (int64_t i = 0; i < n; ++i) (*out)[i] = half_to_float(h[i]); return true;
    case SCALECOM_BF16: for (int64_t i = 0; i < n; ++i) (*out)[i] = bf16_to_float(h[i]); return true;
    default: return false;
  }
}

size_t select_need(int64_t numel, int64_t k) { return 256 + 4 * static_cast<size_t>(numel + k); }
size_t update_need(int64_t k) { return 256 + 4 * static_cast<size_t>(k); }

}  // namespace

extern "C" {

int scalecom_cuda_select_workspace_bytes(int64_t numel, int64_t k, size_t* bytes) {
  if (numel < 0 || k < 0 || k > numel || bytes == nullptr) return kInvalid;
  *bytes = select_need(numel, k);
  return 0;
}

int scalecom_cuda_select_topk(const float* memory, const void* grad, int grad_type,
                              int64_t numel, int64_t k, int32_t* indices, void* workspace,
                              size_t workspace_bytes, void*) {
  if (numel < 0 || k < 0 || k > numel) return kInvalid;
  if (workspace == nullptr || workspace_bytes < select_need(numel, k)) return kInvalid;
  std::vector<float> g;
  if (!widen(grad, grad_type, numel, &g)) return kInvalid;
  try {
    scalecom::select_topk(memory, g.data(), numel, k, indices, 1);
  } catch (const std::exception&) {
    return kInvalid;
  }
  return 0;
}

int scalecom_cuda_gather_update_workspace_bytes(int64_t k, size_t* bytes) {
  if (k < 0 || bytes == nullptr) return kInvalid;
  *bytes = update_need(k);
  return 0;
}

int scalecom_cuda_gather_update(float* memory, const void* grad, int grad_type, int64_t numel,
                                const int32_t* indices, int64_t k, float beta, float* values,
                                unsigned long long* nonfinite, void* workspace,
                                size_t workspace_bytes, void*) {
  if (numel < 0 || k < 0 || k > numel || !(beta > 0.0f && beta <= 1.0f) ||
      nonfinite == nullptr || workspace == nullptr || workspace_bytes < update_need(k)) {
    return kInvalid;
  }
  std::vector<float> g;
  if (!widen(grad, grad_type, numel, &g)) return kInvalid;
  try {
    *nonfinite = static_cast<unsigned long long>(
        scalecom::gather_and_update(memory, g.data(), numel, indices, k, beta, values, 1));
  } catch (const std::exception&) {
    return kInvalid;
  }
  return 0;
}

int scalecom_cuda_scatter(const int32_t* indices, const float* values, int64_t k, int64_t numel,
                          float* out, void*) {
  if (numel < 0 || k < 0 || k > numel) return kInvalid;
  scalecom::scatter(indices, values, k, out, numel, 1);
  return 0;
}

int scalecom_cuda_ring_select(const float* memory, const void* grad, int grad_type, int64_t lo,
                              int64_t hi, int64_t k, int32_t* indices, float* values,
                              void* workspace, size_t workspace_bytes, void* stream) {
  const size_t elem = grad_type == SCALECOM_F32 ? 4 : 2;
  if (lo < 0 || hi < lo) return kInvalid;
  const int err = scalecom_cuda_select_topk(memory + lo, static_cast<const char*>(grad) + lo * elem,
                                            grad_type, hi - lo, k, indices, workspace,
                                            workspace_bytes, stream);
  if (err != 0) return err;
  std::vector<float> g;
  widen(grad, grad_type, hi, &g);
  for (int64_t t = 0; t < k; ++t) {
    indices[t] += static_cast<int32_t>(lo);
    values[t] = memory[indices[t]] + g[indices[t]];
  }
  // A fault on demand, for the ring's check of received indices: this rank
  // sends an index just past its chunk.
  const char* bad_rank = std::getenv("SCALECOM_DOUBLE_BAD_INDEX_RANK");
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  if (k > 0 && bad_rank && rank && std::strcmp(bad_rank, rank) == 0)
    indices[k - 1] = static_cast<int32_t>(hi);
  return 0;
}

int scalecom_cuda_ring_accumulate(const float* memory, const void* grad, int grad_type,
                                  int64_t lo, int64_t hi, const int32_t* indices, int64_t k,
                                  float* values, int* bad, void*) {
  if (lo < 0 || hi < lo || k < 0 || bad == nullptr) return kInvalid;
  std::vector<float> g;
  if (!widen(grad, grad_type, hi, &g)) return kInvalid;
  for (int64_t t = 0; t < k; ++t) {
    const int64_t j = indices[t];
    if (j < lo || j >= hi || (t > 0 && j <= indices[t - 1])) {
      *bad = 1;
      continue;
    }
    values[t] = values[t] + (memory[j] + g[j]);
  }
  return 0;
}

int scalecom_cuda_ring_divide(const float* sums, int64_t k, float divisor, float* out, void*) {
  if (k < 0) return kInvalid;
  for (int64_t t = 0; t < k; ++t) out[t] = sums[t] / divisor;
  return 0;
}

int scalecom_cuda_copy_async(void* dst, const void* src, size_t bytes, void*) {
  if (bytes > 0 && (dst == nullptr || src == nullptr)) return kInvalid;
  if (bytes > 0) std::memmove(dst, src, bytes);
  return 0;
}

int scalecom_cuda_synchronize(void*) { return 0; }

int scalecom_cuda_set_device(int device) { return device >= 0 ? 0 : kInvalid; }

// "Device" and pinned memory are both the host's here; calloc so that a
// read the engine forgot to order shows as zeros, not as leftovers.
int scalecom_cuda_device_alloc(void** ptr, size_t bytes) {
  *ptr = std::calloc(bytes > 0 ? bytes : 1, 1);
  return *ptr ? 0 : 2;  // cudaErrorMemoryAllocation
}
int scalecom_cuda_device_free(void* ptr) { std::free(ptr); return 0; }
int scalecom_cuda_host_alloc(void** ptr, size_t bytes) { return scalecom_cuda_device_alloc(ptr, bytes); }
int scalecom_cuda_host_free(void* ptr) { std::free(ptr); return 0; }

const char* scalecom_cuda_error_string(int code) {
  switch (code) {
    case kInvalid: return "invalid argument (host double)";
    case 2: return "out of memory (host double)";
    default: return "unknown error (host double)";
  }
}

}  // extern "C"
