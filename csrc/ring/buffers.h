// Where an exchange of the ring lives: on the host (the CPU core) or on one
// GPU (the CUDA kernels of csrc/cuda).
//
// The ring (ring.cc) moves fused messages: at each hop it receives one
// message, works on it in place and sends it on at the next hop. A `Side`
// owns those two message buffers and decides what MPI reads and writes; a
// `Buffers` does one tensor's arithmetic on segments of them.
//
// On a GPU the messages and all the arithmetic stay on the device, in the
// same order and rounding as on the host, so both give the same bits. MPI
// reads the device buffers directly when it is CUDA-aware; otherwise each
// hop stages the whole fused message through pinned host memory: one copy
// each way and one wait per hop, whatever the number of tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../cuda/scalecom_cuda.h"
#include "ring.h"

namespace scalecom {

// The C ABI of csrc/cuda/scalecom_cuda.h as function pointers, handed over
// by the frontend that loaded the library (the ring extension does not link
// CUDA, so it loads on machines without it). The functions it needs, without
// the "scalecom_cuda_" prefix, are this one list; horovod_scalecom.cuda hands
// over every function of the library by name, so no order is kept twice.
#define SCALECOM_RING_KERNELS(X) \
  X(select_workspace_bytes) \
  X(ring_select) \
  X(gather_update_workspace_bytes) \
  X(gather_update) \
  X(scatter) \
  X(ring_accumulate) \
  X(ring_divide) \
  X(copy_async) \
  X(synchronize) \
  X(set_device) \
  X(device_alloc) \
  X(device_free) \
  X(host_alloc) \
  X(host_free) \
  X(error_string)

struct DeviceKernels {
#define SCALECOM_KERNEL_FIELD(name) decltype(&scalecom_cuda_##name) name = nullptr;
  SCALECOM_RING_KERNELS(SCALECOM_KERNEL_FIELD)
#undef SCALECOM_KERNEL_FIELD

  // Calls f(name, entry) on every entry.
  template <typename Table, typename F>
  static void each(Table& table, F&& f) {
#define SCALECOM_KERNEL_VISIT(name) f(#name, table.name);
    SCALECOM_RING_KERNELS(SCALECOM_KERNEL_VISIT)
#undef SCALECOM_KERNEL_VISIT
  }
  bool complete() const;
};

// numpy.array_split bounds of n chunks, and k per chunk.
void chunk_plan(int64_t numel, int64_t n, double ratio, std::vector<int64_t>* bounds,
                std::vector<int64_t>* k);

// One tensor's arithmetic. Pointers to indices and values lie in its Side's
// memory (message segments); `at` is a chunk's place in the union of the
// chunks' index sets, which finish() uses.
class Buffers {
 public:
  virtual ~Buffers() = default;
  // idx = the top-k |m + g| within [lo, hi) as tensor indices, ascending;
  // values = m + g there.
  virtual void select(int64_t lo, int64_t hi, int64_t k, int32_t* idx, float* values) = 0;
  // One reduce-scatter hop, in place: values[q] = values[q] + (m + g)[idx[q]],
  // after checking that idx (from another rank) lies in [lo, hi) and ascends.
  virtual void accumulate(int64_t lo, int64_t hi, const int32_t* idx, int64_t k,
                          float* values) = 0;
  // Remembers a chunk's index set, and its mean (sums / n), at `at`.
  virtual void keep_indices(int64_t at, const int32_t* idx, int64_t k) = 0;
  virtual void keep_means(int64_t at, const float* sums, int64_t k, float n) = 0;
  // out = the dense mean (zero off the union), then the low-pass memory
  // update over the union (ascending: chunks are contiguous and in order).
  virtual void finish(float beta) = 0;
  // Memory entries that refused a non-finite update; after Side::wait().
  virtual int64_t nonfinite() = 0;
};

class Side {
 public:
  virtual ~Side() = default;
  // Room for messages of `words` 32-bit words (contents not kept).
  virtual void reserve(size_t words) = 0;
  uint32_t* send() { return buf_[0]; }
  uint32_t* recv() { return buf_[1]; }
  // The received message becomes the next one to send.
  void swap() { std::swap(buf_[0], buf_[1]); }
  // Copies `words` words between the side's message buffers.
  virtual void copy(uint32_t* dst, const uint32_t* src, size_t words) = 0;
  // What MPI sends from: the send buffer, complete, or a host copy of it.
  virtual const void* outgoing(size_t bytes) = 0;
  // What MPI receives into, and how the received bytes reach recv().
  virtual void* incoming() = 0;
  virtual void arrived(size_t bytes) = 0;
  // Waits for all the side's work; throws what it found (bad indices).
  virtual void wait() = 0;
  // Threads for the exchange about to run (the host side's CPU work).
  virtual void set_threads(int) {}
  virtual std::unique_ptr<Buffers> buffers(const RingTensor& t, int64_t n, double ratio,
                                           int tensor) = 0;

 protected:
  uint32_t* buf_[2] = {nullptr, nullptr};
};

// The host side: the CPU core with `num_threads` threads.
std::unique_ptr<Side> host_side(int num_threads);

// A GPU's side. cuda_aware: MPI reads and writes device memory itself.
// Keeps its buffers between exchanges (prepare() grows them).
class DeviceSide : public Side {
 public:
  DeviceSide(const DeviceKernels& kernels, int device, bool cuda_aware);
  ~DeviceSide() override;
  int device() const { return device_; }
  // Before each exchange of `tensors` tensors: current device, flag cleared.
  void prepare(int tensors);
  void reserve(size_t words) override;
  void copy(uint32_t* dst, const uint32_t* src, size_t words) override;
  const void* outgoing(size_t bytes) override;
  void* incoming() override;
  void arrived(size_t bytes) override;
  void wait() override;
  std::unique_ptr<Buffers> buffers(const RingTensor& t, int64_t n, double ratio,
                                   int tensor) override;

 private:
  void* device_alloc(size_t bytes);
  void* host_alloc(size_t bytes);
  void free_messages();
  void free_all();
  void check(int code, const char* what) const;
  void wait_and_check();

  const DeviceKernels& kern_;
  int device_;
  bool cuda_aware_;
  size_t words_ = 0;
  int counters_ = 0;
  uint32_t* staged_[2] = {nullptr, nullptr};   // pinned copies of the messages
  int* bad_ = nullptr;                         // device flag, set by ring_accumulate
  int* bad_host_ = nullptr;                    // pinned
  unsigned long long* nonfinite_host_ = nullptr;  // pinned, one per tensor
};

// Scratch bytes a device tensor of numel elements needs on its GPU.
size_t device_scratch_bytes(const DeviceKernels& kernels, int64_t numel, int64_t n,
                            double ratio);

}  // namespace scalecom
