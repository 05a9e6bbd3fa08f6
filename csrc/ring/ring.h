// Path B of ScaleCom: a compressed ring allreduce over MPI with chunk-wise
// cyclic owners (DESIGN.md section 2B), framework-free.
//
// Each tensor is cut into n contiguous chunks (numpy.array_split); at the
// tensor's step t chunk j is owned by rank (j + t) mod n.
//   reduce-scatter, n - 1 hops: the owner selects top-k_j of |m + g| in its
//     chunk and sends (indices, values) to its right neighbour; each next rank
//     adds its own m + g at those indices and forwards. The sum is complete at
//     the owner's left neighbour, summed in ring order, as the reference does.
//   allgather, n - 1 hops: values only.
// All tensors of a step travel fused: one MPI_Sendrecv per hop. Every rank has
// seen every chunk's index set, so it applies the low-pass memory update for
// their union and writes the dense mean.
//
// The engine owns a duplicate of MPI_COMM_WORLD, so its messages never mix with
// Horovod's, and runs each exchange on a thread of its own so that a frontend
// can overlap it with other work; MPI must provide MPI_THREAD_MULTIPLE.
#pragma once

#include <mpi.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace scalecom {

struct RingTensor {
  float* memory = nullptr;    // numel float32, updated in place
  const void* grad = nullptr; // numel elements of grad_type (float32 on the host)
  int grad_type = 0;          // ScalecomGradType of csrc/cuda/scalecom_cuda.h
  float* out = nullptr;       // numel float32: the dense mean of the step
  int64_t numel = 0;
  int64_t step = 0;           // the tensor's step t: fixes the chunk owners
  int device = -1;            // -1: host memory; else the CUDA device of all three
  void* scratch = nullptr;    // device tensors: device_scratch_bytes() on that device
  size_t scratch_bytes = 0;
};

struct DeviceKernels;
class Side;
class DeviceSide;

// How device tensors' messages reach MPI: kAuto asks the MPI library
// whether it reads device memory (Open MPI's MPIX_Query_cuda_support, MPICH's
// MPIX_GPU_query_support); kStaged copies them through pinned host memory;
// kCudaAware hands MPI the device buffers.
enum class DeviceTransport { kAuto, kStaged, kCudaAware };

// Whether the MPI library this process runs says it reads CUDA device memory.
bool mpi_is_cuda_aware();

class RingEngine {
 public:
  // Duplicates MPI_COMM_WORLD (collective: every rank must construct it).
  // Throws std::runtime_error if MPI is not initialized or its thread level
  // is below MPI_THREAD_MULTIPLE.
  RingEngine();
  ~RingEngine();
  RingEngine(const RingEngine&) = delete;
  RingEngine& operator=(const RingEngine&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Starts one fused exchange on the engine's thread. The buffers must stay
  // valid until wait() returns true. One exchange at a time. Device tensors
  // need set_device_kernels() first.
  void start(std::vector<RingTensor> tensors, double ratio, float beta, int num_threads);

  // The CUDA kernels for device tensors (see buffers.h), and how their
  // messages reach MPI.
  void set_device_kernels(const DeviceKernels& kernels, DeviceTransport transport);
  // After set_device_kernels: whether MPI is handed device buffers.
  bool cuda_aware() const { return cuda_aware_; }
  // Scratch bytes a device tensor of numel elements needs (RingTensor::scratch).
  size_t device_scratch_bytes(int64_t numel, double ratio) const;

  // Waits up to timeout_s seconds. True when the exchange finished (rethrows
  // its error, if any); false on timeout, after which the engine is unusable.
  bool wait(double timeout_s);

  // Bytes this rank sent in the last finished exchange (payload of all hops).
  int64_t last_bytes() const { return last_bytes_; }
  // Memory entries that refused a non-finite update in the last exchange.
  int64_t last_nonfinite() const { return last_nonfinite_; }
  // Seconds the last exchange spent selecting, writing the dense output and
  // updating the memory (its work outside MPI), so a benchmark can tell
  // compute from communication.
  double last_compute_s() const { return last_compute_s_; }

 private:
  void run(std::vector<RingTensor> tensors, double ratio, float beta, int num_threads);
  void exchange(std::vector<RingTensor>& tensors, double ratio, float beta, int num_threads);
  void check_agreement(const std::vector<RingTensor>& tensors, double ratio);
  void sendrecv(const void* send, int64_t send_bytes, void* recv, int64_t recv_bytes);
  // One hop of fused messages: the side's send buffer out, its recv buffer in.
  void hop_exchange(Side& side, size_t send_words, size_t recv_words);
  // Where this exchange's messages and arithmetic live.
  Side& side_for(const std::vector<RingTensor>& tensors, int num_threads);

  // Declared before the side that refers to them: destroyed after it.
  std::unique_ptr<DeviceKernels> kernels_;
  bool cuda_aware_ = false;
  std::unique_ptr<DeviceSide> device_side_;   // kept between exchanges (its buffers)
  std::unique_ptr<Side> host_side_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool busy_ = false;
  bool done_ = false;
  bool broken_ = false;
  std::exception_ptr error_;
  int64_t last_bytes_ = 0;
  int64_t bytes_ = 0;
  int64_t last_nonfinite_ = 0;
  int64_t nonfinite_ = 0;
  double last_compute_s_ = 0.0;
  double compute_s_ = 0.0;
};

}  // namespace scalecom
