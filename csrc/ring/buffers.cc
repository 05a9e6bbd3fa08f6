#include "buffers.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../core/scalecom.h"

namespace scalecom {

bool DeviceKernels::complete() const {
  bool all = true;
  each(*this, [&all](const char*, auto fn) { all = all && fn != nullptr; });
  return all;
}

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

int64_t union_size(int64_t numel, int64_t n, double ratio) {
  std::vector<int64_t> bounds, k;
  chunk_plan(numel, n, ratio, &bounds, &k);
  int64_t total = 0;
  for (int64_t kj : k) total += kj;
  return total;
}

[[noreturn]] void bad_indices() {
  throw std::runtime_error("ring allreduce: received an index outside its chunk; the ranks "
                           "disagree on the tensors");
}

// --- the host --------------------------------------------------------------

class HostBuffers final : public Buffers {
 public:
  HostBuffers(const RingTensor& t, int64_t k_total, int num_threads)
      : t_(t), grad_(static_cast<const float*>(t.grad)), threads_(num_threads),
        union_(k_total), means_(k_total) {}

  void select(int64_t lo, int64_t hi, int64_t k, int32_t* idx, float* values) override {
    select_topk(t_.memory + lo, grad_ + lo, hi - lo, k, idx, threads_);
    for (int64_t q = 0; q < k; ++q) {
      idx[q] += static_cast<int32_t>(lo);
      values[q] = t_.memory[idx[q]] + grad_[idx[q]];
    }
  }

  void accumulate(int64_t lo, int64_t hi, const int32_t* idx, int64_t k,
                  float* values) override {
    if (first_bad_index(idx, k, lo, hi) >= 0) bad_indices();
    for (int64_t q = 0; q < k; ++q) values[q] = values[q] + (t_.memory[idx[q]] + grad_[idx[q]]);
  }

  void keep_indices(int64_t at, const int32_t* idx, int64_t k) override {
    std::copy(idx, idx + k, union_.begin() + at);
  }

  void keep_means(int64_t at, const float* sums, int64_t k, float n) override {
    for (int64_t q = 0; q < k; ++q) means_[at + q] = sums[q] / n;
  }

  void finish(float beta) override {
    nonfinite_ = update_and_scatter(t_.memory, grad_, t_.out, t_.numel, union_.data(),
                                    static_cast<int64_t>(union_.size()), beta, means_.data(),
                                    threads_);
  }

  int64_t nonfinite() override { return nonfinite_; }

 private:
  RingTensor t_;
  const float* grad_;
  int threads_;
  std::vector<int32_t> union_;
  std::vector<float> means_;
  int64_t nonfinite_ = 0;
};

class HostSide final : public Side {
 public:
  explicit HostSide(int num_threads) : threads_(num_threads) {}

  void reserve(size_t words) override {
    for (int b = 0; b < 2; ++b) {
      messages_[b].resize(std::max<size_t>(words, 1));
      buf_[b] = messages_[b].data();
    }
  }
  void copy(uint32_t* dst, const uint32_t* src, size_t words) override {
    std::memcpy(dst, src, 4 * words);
  }
  const void* outgoing(size_t) override { return send(); }
  void* incoming() override { return recv(); }
  void arrived(size_t) override {}
  void wait() override {}
  void set_threads(int num_threads) override { threads_ = num_threads; }

  std::unique_ptr<Buffers> buffers(const RingTensor& t, int64_t n, double ratio,
                                   int) override {
    if (t.grad_type != SCALECOM_F32)
      throw std::invalid_argument("ring allreduce: host gradients must be float32");
    return std::make_unique<HostBuffers>(t, union_size(t.numel, n, ratio), threads_);
  }

 private:
  int threads_;
  std::vector<uint32_t> messages_[2];
};

// --- a GPU -----------------------------------------------------------------

size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

void check_cuda(const DeviceKernels& kern, int code, const char* what) {
  if (code != 0)
    throw std::runtime_error(std::string("ring allreduce on the GPU: ") + what + ": " +
                             kern.error_string(code));
}

// A device tensor's scratch: the union of index sets, its means, the
// non-finite counter, and the larger of the two kernels' workspaces.
struct ScratchLayout {
  int64_t k_total = 0;
  size_t means = 0, counter = 0, workspace = 0, workspace_bytes = 0, total = 0;
};

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
  lay.means = k_bytes;
  lay.counter = 2 * k_bytes;
  lay.workspace = lay.counter + aligned(sizeof(unsigned long long));
  lay.total = lay.workspace + aligned(std::max<size_t>(lay.workspace_bytes, 1));
  return lay;
}

class DeviceBuffers final : public Buffers {
 public:
  DeviceBuffers(const RingTensor& t, const DeviceKernels& kern, int64_t n, double ratio,
                int* bad, unsigned long long* nonfinite_host)
      : t_(t), kern_(kern), lay_(scratch_layout(kern, t.numel, n, ratio)), bad_(bad),
        nonfinite_host_(nonfinite_host) {
    if (t.scratch == nullptr || t.scratch_bytes < lay_.total)
      throw std::invalid_argument("ring allreduce: a device tensor's scratch has " +
                                  std::to_string(t.scratch_bytes) + " bytes, it needs " +
                                  std::to_string(lay_.total));
    char* base = static_cast<char*>(t.scratch);
    union_ = reinterpret_cast<int32_t*>(base);
    means_ = reinterpret_cast<float*>(base + lay_.means);
    counter_ = reinterpret_cast<unsigned long long*>(base + lay_.counter);
    workspace_ = base + lay_.workspace;
  }

  void select(int64_t lo, int64_t hi, int64_t k, int32_t* idx, float* values) override {
    check_cuda(kern_, kern_.ring_select(t_.memory, t_.grad, t_.grad_type, lo, hi, k, idx, values,
                                        workspace_, lay_.workspace_bytes, nullptr),
               "ring_select");
  }

  void accumulate(int64_t lo, int64_t hi, const int32_t* idx, int64_t k,
                  float* values) override {
    // A bad index sets the side's flag, which wait() turns into the host's error.
    check_cuda(kern_, kern_.ring_accumulate(t_.memory, t_.grad, t_.grad_type, lo, hi, idx, k,
                                            values, bad_, nullptr),
               "ring_accumulate");
  }

  void keep_indices(int64_t at, const int32_t* idx, int64_t k) override {
    check_cuda(kern_, kern_.copy_async(union_ + at, idx, 4 * static_cast<size_t>(k), nullptr),
               "copy_async");
  }

  void keep_means(int64_t at, const float* sums, int64_t k, float n) override {
    check_cuda(kern_, kern_.ring_divide(sums, k, n, means_ + at, nullptr), "ring_divide");
  }

  void finish(float beta) override {
    check_cuda(kern_, kern_.scatter(union_, means_, lay_.k_total, t_.numel, t_.out, nullptr),
               "scatter");
    // Same stream: the scatter has read the means before the update overwrites them.
    check_cuda(kern_, kern_.gather_update(t_.memory, t_.grad, t_.grad_type, t_.numel, union_,
                                          lay_.k_total, beta, means_, counter_, workspace_,
                                          lay_.workspace_bytes, nullptr),
               "gather_update");
    check_cuda(kern_, kern_.copy_async(nonfinite_host_, counter_, sizeof *counter_, nullptr),
               "copy_async");
  }

  int64_t nonfinite() override { return static_cast<int64_t>(*nonfinite_host_); }

 private:
  RingTensor t_;
  const DeviceKernels& kern_;
  ScratchLayout lay_;
  int* bad_;
  unsigned long long* nonfinite_host_;
  int32_t* union_ = nullptr;
  float* means_ = nullptr;
  unsigned long long* counter_ = nullptr;
  char* workspace_ = nullptr;
};

}  // namespace

std::unique_ptr<Side> host_side(int num_threads) { return std::make_unique<HostSide>(num_threads); }

DeviceSide::DeviceSide(const DeviceKernels& kernels, int device, bool cuda_aware)
    : kern_(kernels), device_(device), cuda_aware_(cuda_aware) {
  check(kern_.set_device(device_), "set_device");
  try {
    bad_ = static_cast<int*>(device_alloc(sizeof(int)));
    bad_host_ = static_cast<int*>(host_alloc(sizeof(int)));
  } catch (...) {
    free_all();
    throw;
  }
}

DeviceSide::~DeviceSide() {
  // Errors ignored: at interpreter exit the CUDA runtime may be gone first.
  if (kern_.set_device(device_) == 0) free_all();
}

void DeviceSide::free_messages() {
  for (int b = 0; b < 2; ++b) {
    if (buf_[b]) kern_.device_free(buf_[b]);
    if (staged_[b]) kern_.host_free(staged_[b]);
    buf_[b] = staged_[b] = nullptr;
  }
  words_ = 0;
}

void DeviceSide::free_all() {
  free_messages();
  if (bad_) kern_.device_free(bad_);
  if (bad_host_) kern_.host_free(bad_host_);
  if (nonfinite_host_) kern_.host_free(nonfinite_host_);
  bad_ = bad_host_ = nullptr;
  nonfinite_host_ = nullptr;
}

void DeviceSide::check(int code, const char* what) const { check_cuda(kern_, code, what); }

void* DeviceSide::device_alloc(size_t bytes) {
  void* p = nullptr;
  check(kern_.device_alloc(&p, std::max<size_t>(bytes, 1)), "device_alloc");
  return p;
}

void* DeviceSide::host_alloc(size_t bytes) {
  void* p = nullptr;
  check(kern_.host_alloc(&p, std::max<size_t>(bytes, 1)), "host_alloc (pinned)");
  return p;
}

void DeviceSide::prepare(int tensors) {
  check(kern_.set_device(device_), "set_device");   // the engine's thread
  if (tensors > counters_) {
    if (nonfinite_host_) kern_.host_free(nonfinite_host_);
    nonfinite_host_ = nullptr;   // and no room, should the allocation below throw
    counters_ = 0;
    nonfinite_host_ = static_cast<unsigned long long*>(
        host_alloc(sizeof(unsigned long long) * tensors));
    counters_ = tensors;
  }
  *bad_host_ = 0;
  check(kern_.copy_async(bad_, bad_host_, sizeof(int), nullptr), "copy_async");
  check(kern_.synchronize(nullptr), "synchronize");
}

void DeviceSide::reserve(size_t words) {
  words = std::max<size_t>(words, 1);
  if (words > words_) {   // words_ is 0 until every buffer of the last attempt was allocated
    free_messages();
    for (int b = 0; b < 2; ++b) {
      buf_[b] = static_cast<uint32_t*>(device_alloc(4 * words));
      if (!cuda_aware_) staged_[b] = static_cast<uint32_t*>(host_alloc(4 * words));
    }
    words_ = words;
  }
}

void DeviceSide::copy(uint32_t* dst, const uint32_t* src, size_t words) {
  check(kern_.copy_async(dst, src, 4 * words, nullptr), "copy_async");
}

void DeviceSide::wait_and_check() {
  check(kern_.copy_async(bad_host_, bad_, sizeof(int), nullptr), "copy_async");
  check(kern_.synchronize(nullptr), "synchronize");
  if (*bad_host_) bad_indices();
}

const void* DeviceSide::outgoing(size_t bytes) {
  if (!cuda_aware_) check(kern_.copy_async(staged_[0], send(), bytes, nullptr), "copy_async");
  // A CUDA-aware MPI does not wait for our stream either: the message must be complete.
  wait_and_check();
  return cuda_aware_ ? static_cast<const void*>(send()) : staged_[0];
}

void* DeviceSide::incoming() { return cuda_aware_ ? recv() : staged_[1]; }

void DeviceSide::arrived(size_t bytes) {
  // No wait: the kernels that read it follow on the stream, and MPI writes
  // staged_[1] again only after the next outgoing() has waited.
  if (!cuda_aware_) check(kern_.copy_async(recv(), staged_[1], bytes, nullptr), "copy_async");
}

void DeviceSide::wait() { wait_and_check(); }

std::unique_ptr<Buffers> DeviceSide::buffers(const RingTensor& t, int64_t n, double ratio,
                                             int tensor) {
  if (t.device != device_)
    throw std::invalid_argument("ring allreduce: tensors of one exchange on GPUs " +
                                std::to_string(device_) + " and " + std::to_string(t.device));
  return std::make_unique<DeviceBuffers>(t, kern_, n, ratio, bad_, nonfinite_host_ + tensor);
}

size_t device_scratch_bytes(const DeviceKernels& kernels, int64_t numel, int64_t n,
                            double ratio) {
  return scratch_layout(kernels, numel, n, ratio).total;
}

}  // namespace scalecom
