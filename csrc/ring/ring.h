// The ScaleCom ring: a compressed ring allreduce over MPI with chunk-wise
// cyclic owners (docs/algorithm.md, "The ScaleCom ring"), framework-free.
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
// Horovod's, and runs the exchanges on a thread of its own, in the order they
// were started, so that a frontend can start a group of gradients as soon as
// backward has produced it and overlap the ring with the rest of backward;
// MPI must provide MPI_THREAD_MULTIPLE. Every rank must start the same groups
// in the same order.
#pragma once

#include <mpi.h>

#include <condition_variable>
#include <deque>
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
  float* out = nullptr;       // numel float32: the dense mean of the step; on the host it
                              // may be grad itself (float32 then), written after it is read
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

// Throws "<who>: <what> failed: <MPI's words>" unless code is MPI_SUCCESS.
void check_mpi(int code, const char* what, const char* who = "ring allreduce");

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

  // Queues one fused exchange (a group of tensors) behind those started
  // before; the engine's thread runs them in order. The buffers must stay
  // valid until wait() returns true. Device tensors need set_device_kernels()
  // first.
  void start(std::vector<RingTensor> tensors, double ratio, float beta, int num_threads);

  // The CUDA kernels for device tensors (see buffers.h), and how their
  // messages reach MPI.
  void set_device_kernels(const DeviceKernels& kernels, DeviceTransport transport);
  // After set_device_kernels: whether MPI is handed device buffers.
  bool cuda_aware() const { return cuda_aware_; }
  // Scratch bytes a device tensor of numel elements needs (RingTensor::scratch).
  size_t device_scratch_bytes(int64_t numel, double ratio) const;

  // Waits up to timeout_s seconds for every exchange started so far. True when
  // they finished (rethrows the first error, if any); false on timeout, after
  // which the engine is unusable.
  bool wait(double timeout_s);

  // Every rank reaches close() before any leaves it, so no rank finalizes MPI
  // while a peer still receives from it (Open MPI 4.1's TCP transport hung or
  // crashed on that). A barrier, polled up to timeout_s; false on timeout.
  // The barrier is made of point-to-point messages with the tag max_tag()
  // (reserved: the index share uses the tags below it): Open MPI 4.1's
  // nonblocking collectives are not safe to progress from two threads, and
  // Horovod's thread progresses MPI all along (an MPI_Ibarrier here crashed
  // about one exit in 40).
  bool close(double timeout_s);

  // The index share of ScaleCom through Horovod's allreduce (share.cc): the leader sends indices[0..k) to every
  // other rank with `tag` (the tensor's registration index) and returns at
  // once; the others receive them into `indices`. False when nothing came
  // within timeout_s (the receive stays posted: never free `indices` then).
  bool share(int32_t* indices, int64_t k, int leader, int tag, double timeout_s);
  // The largest tag MPI allows (at least 32767).
  int max_tag() const;

  // Where the time of the exchanges finished by the last wait() went, summed
  // over them (seconds). On a GPU a phase counts its launches and the waits
  // for the stream that fall inside it.
  struct Timings {
    double agree = 0;       // the agreement check: one 16-byte allreduce per exchange
    double select = 0;      // the chunk owners' top-k, with m + g at those indices
    double mpi_rs = 0;      // MPI_Sendrecv of the reduce-scatter hops, staging included
    double reduce = 0;      // adding this rank's m + g at the received indices
    double mpi_ag = 0;      // MPI_Sendrecv of the allgather hops
    double pack = 0;        // means of held sums and copying them into the next message
    double unpack = 0;      // means of the received sums
    double update = 0;      // the dense output and the low-pass memory update
    double busy = 0;        // wall time the engine's thread spent on these exchanges
    int exchanges = 0;
  };
  const Timings& last_timings() const { return last_timings_; }

  // Bytes this rank sent in the exchanges finished by the last wait().
  int64_t last_bytes() const { return last_bytes_; }
  // Memory entries that refused a non-finite update in them.
  int64_t last_nonfinite() const { return last_nonfinite_; }
  // Seconds they spent selecting, writing the dense output and updating the
  // memory (their work outside MPI), so a benchmark can tell compute from
  // communication.
  double last_compute_s() const {
    return last_timings_.select + last_timings_.reduce + last_timings_.pack +
           last_timings_.unpack + last_timings_.update;
  }

 private:
  struct Job {
    std::vector<RingTensor> tensors;
    double ratio;
    float beta;
    int num_threads;
  };
  void serve();
  // The two sides of share(): the leader's sends, posted and kept in sends_;
  // another rank's receive, polled until timeout_s.
  void send_indices(const int32_t* indices, int count, int tag);
  bool receive_indices(int32_t* indices, int count, int leader, int tag, double timeout_s);
  // Completes the leader's finished sends; finish_sends waits for all of them.
  void progress_sends();
  bool finish_sends(double timeout_s);
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
  std::thread worker_;         // serve(), from the first start() to the destructor
  std::mutex mu_;
  std::condition_variable cv_;  // a job queued, a job done, or stopping
  std::deque<Job> queue_;
  int pending_ = 0;             // started and not finished
  bool stopping_ = false;
  bool broken_ = false;
  std::exception_ptr error_;    // the first error since the last wait()
  // Written by the engine's thread only while pending_ > 0, read by wait() at 0.
  Timings timings_, last_timings_;
  int64_t bytes_ = 0, last_bytes_ = 0;
  int64_t nonfinite_ = 0, last_nonfinite_ = 0;
  // The index shares this rank sent as leader, until MPI is done with them.
  struct PendingSend {
    std::vector<int32_t> data;
    std::vector<MPI_Request> requests;
  };
  std::mutex share_mu_;
  std::deque<PendingSend> sends_;
};

}  // namespace scalecom
