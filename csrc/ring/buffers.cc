#include "buffers.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../core/scalecom.h"

namespace scalecom {

void chunk_plan(int64_t numel, int64_t n, double ratio, std::vector<int64_t>* bounds,
                std::vector<int64_t>* k) {
  bounds->assign(n + 1, 0);
  k->clear();
  const int64_t base = numel / n, extra = numel % n;
  for (int64_t j = 0; j < n; ++j) {
    (*bounds)[j + 1] = (*bounds)[j] + base + (j < extra ? 1 : 0);
    k->push_back(num_selected((*bounds)[j + 1] - (*bounds)[j], ratio));
  }
}

namespace {

class HostBuffers final : public Buffers {
 public:
  HostBuffers(const RingTensor& t, int num_threads)
      : t_(t), grad_(static_cast<const float*>(t.grad)), threads_(num_threads) {}

  void select(int64_t lo, int64_t hi, int64_t k, int32_t* idx, float* values) override {
    select_topk(t_.memory + lo, grad_ + lo, hi - lo, k, idx, threads_);
    for (int64_t q = 0; q < k; ++q) {
      idx[q] += static_cast<int32_t>(lo);
      values[q] = t_.memory[idx[q]] + grad_[idx[q]];
    }
  }

  void accumulate(const int32_t* idx, int64_t k, float* values) override {
    for (int64_t q = 0; q < k; ++q) values[q] = values[q] + (t_.memory[idx[q]] + grad_[idx[q]]);
  }

  int64_t finish(const std::vector<int32_t>& idx, const std::vector<float>& means,
                 float beta) override {
    std::fill(t_.out, t_.out + t_.numel, 0.0f);
    for (size_t q = 0; q < idx.size(); ++q) t_.out[idx[q]] = means[q];
    scratch_.resize(idx.size());
    return gather_and_update(t_.memory, grad_, t_.numel, idx.data(),
                             static_cast<int64_t>(idx.size()), beta, scratch_.data(), threads_);
  }

 private:
  RingTensor t_;
  const float* grad_;
  int threads_;
  std::vector<float> scratch_;
};

constexpr size_t kAlign = 256;
size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

size_t element_size(int grad_type) {
  switch (grad_type) {
    case SCALECOM_F32: return 4;
    case SCALECOM_F16:
    case SCALECOM_BF16: return 2;
    default: throw std::invalid_argument("ring allreduce: unknown gradient type " +
                                         std::to_string(grad_type));
  }
}

// The device scratch: k_total indices, k_total values, one counter, and the
// larger of the two kernels' workspaces.
struct ScratchLayout {
  int64_t k_total = 0;
  size_t values = 0, counter = 0, workspace = 0, workspace_bytes = 0, total = 0;
};

void check_cuda(const DeviceKernels& kern, int code, const char* what) {
  if (code != 0)
    throw std::runtime_error(std::string("ring allreduce on the GPU: ") + what + ": " +
                             kern.error_string(code));
}

ScratchLayout scratch_layout(const DeviceKernels& kern, int64_t numel, int64_t n, double ratio) {
  std::vector<int64_t> bounds, k;
  chunk_plan(numel, n, ratio, &bounds, &k);
  ScratchLayout lay;
  for (int64_t j = 0; j < n; ++j) {
    lay.k_total += k[j];
    size_t bytes = 0;
    check_cuda(kern, kern.select_workspace_bytes(bounds[j + 1] - bounds[j], k[j], &bytes),
               "select_workspace_bytes");
    lay.workspace_bytes = std::max(lay.workspace_bytes, bytes);
  }
  size_t bytes = 0;
  check_cuda(kern, kern.gather_update_workspace_bytes(lay.k_total, &bytes),
             "gather_update_workspace_bytes");
  lay.workspace_bytes = std::max(lay.workspace_bytes, bytes);
  const size_t k_bytes = aligned(4 * static_cast<size_t>(std::max<int64_t>(lay.k_total, 1)));
  lay.values = k_bytes;
  lay.counter = 2 * k_bytes;
  lay.workspace = lay.counter + aligned(sizeof(unsigned long long));
  lay.total = lay.workspace + aligned(std::max<size_t>(lay.workspace_bytes, 1));
  return lay;
}

class DeviceBuffers final : public Buffers {
 public:
  DeviceBuffers(const RingTensor& t, const DeviceKernels& kern, int64_t n, double ratio)
      : t_(t), kern_(kern), elem_(element_size(t.grad_type)) {
    check_cuda(kern_, kern_.set_device(t.device), "set_device");
    lay_ = scratch_layout(kern_, t.numel, n, ratio);
    if (t.scratch == nullptr || t.scratch_bytes < lay_.total)
      throw std::invalid_argument("ring allreduce: a device tensor's scratch has " +
                                  std::to_string(t.scratch_bytes) + " bytes, it needs " +
                                  std::to_string(lay_.total));
    char* base = static_cast<char*>(t.scratch);
    d_idx_ = reinterpret_cast<int32_t*>(base);
    d_values_ = reinterpret_cast<float*>(base + lay_.values);
    d_counter_ = reinterpret_cast<unsigned long long*>(base + lay_.counter);
    d_workspace_ = base + lay_.workspace;
  }

  void select(int64_t lo, int64_t hi, int64_t k, int32_t* idx, float* values) override {
    const char* grad = static_cast<const char*>(t_.grad) + lo * elem_;
    // Chunk-local indices and values straight from the chunk's own pointers.
    check_cuda(kern_, kern_.select_topk(t_.memory + lo, grad, t_.grad_type, hi - lo, k, d_idx_,
                                        d_workspace_, lay_.workspace_bytes, nullptr),
               "select_topk");
    check_cuda(kern_, kern_.gather(t_.memory + lo, grad, t_.grad_type, hi - lo, d_idx_, k,
                                   d_values_, nullptr), "gather");
    download(idx, d_idx_, k);
    download(values, d_values_, k);
    for (int64_t q = 0; q < k; ++q) idx[q] += static_cast<int32_t>(lo);
  }

  void accumulate(const int32_t* idx, int64_t k, float* values) override {
    upload(d_idx_, idx, k);
    check_cuda(kern_, kern_.gather(t_.memory, t_.grad, t_.grad_type, t_.numel, d_idx_, k,
                                   d_values_, nullptr), "gather");
    staged_.resize(k);
    download(staged_.data(), d_values_, k);
    for (int64_t q = 0; q < k; ++q) values[q] = values[q] + staged_[q];
  }

  int64_t finish(const std::vector<int32_t>& idx, const std::vector<float>& means,
                 float beta) override {
    const int64_t k = static_cast<int64_t>(idx.size());
    upload(d_idx_, idx.data(), k);
    upload(d_values_, means.data(), k);
    check_cuda(kern_, kern_.scatter(d_idx_, d_values_, k, t_.numel, t_.out, nullptr), "scatter");
    // Same stream: the scatter has read the means before the update overwrites them.
    check_cuda(kern_, kern_.gather_update(t_.memory, t_.grad, t_.grad_type, t_.numel, d_idx_, k,
                                          beta, d_values_, d_counter_, d_workspace_,
                                          lay_.workspace_bytes, nullptr),
               "gather_update");
    unsigned long long kept = 0;
    check_cuda(kern_, kern_.copy(&kept, d_counter_, sizeof kept, nullptr), "copy");
    return static_cast<int64_t>(kept);
  }

 private:
  template <typename T>
  void upload(T* device, const T* host, int64_t count) {
    check_cuda(kern_, kern_.copy(device, host, sizeof(T) * count, nullptr), "copy to the GPU");
  }
  template <typename T>
  void download(T* host, const T* device, int64_t count) {
    check_cuda(kern_, kern_.copy(host, device, sizeof(T) * count, nullptr), "copy to the host");
  }

  RingTensor t_;
  const DeviceKernels& kern_;
  size_t elem_;
  ScratchLayout lay_;
  int32_t* d_idx_ = nullptr;
  float* d_values_ = nullptr;
  unsigned long long* d_counter_ = nullptr;
  char* d_workspace_ = nullptr;
  std::vector<float> staged_;
};

}  // namespace

std::unique_ptr<Buffers> host_buffers(const RingTensor& t, int num_threads) {
  if (t.grad_type != SCALECOM_F32)
    throw std::invalid_argument("ring allreduce: host gradients must be float32");
  return std::make_unique<HostBuffers>(t, num_threads);
}

std::unique_ptr<Buffers> device_buffers(const RingTensor& t, const DeviceKernels& kernels,
                                        int64_t n, double ratio) {
  return std::make_unique<DeviceBuffers>(t, kernels, n, ratio);
}

size_t device_scratch_bytes(const DeviceKernels& kernels, int64_t numel, int64_t n,
                            double ratio) {
  return scratch_layout(kernels, numel, n, ratio).total;
}

}  // namespace scalecom
