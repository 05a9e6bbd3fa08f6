// The ring engine around the exchanges: MPI checks, the queue and its
// thread, waiting and closing, and the messages' MPI calls. One exchange's
// algorithm is in exchange.cc, the index share in share.cc.
#include "ring.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "../core/scalecom.h"
#include "buffers.h"

#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>   // Open MPI's and MPICH's extensions: the CUDA-awareness queries
#endif

namespace scalecom {

void check_mpi(int code, const char* what, const char* who) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw std::runtime_error(std::string(who) + ": " + what + " failed: " +
                           std::string(text, len));
}

namespace {

std::string where(int device) { return device < 0 ? "the host" : "GPU " + std::to_string(device); }

}  // namespace

bool mpi_is_cuda_aware() {
#if defined(MPIX_CUDA_AWARE_SUPPORT)
  // Open MPI: the header says how it was configured, the call what runs now
  // (the library loaded may not be the one compiled against).
  return MPIX_Query_cuda_support() == 1;
#elif defined(MPIX_GPU_SUPPORT_CUDA)
  int supported = 0;
  return MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA, &supported) == MPI_SUCCESS &&
         supported != 0;
#else
  return false;
#endif
}

RingEngine::RingEngine() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized)
    throw std::runtime_error(
        "ring allreduce: MPI is not initialized. Call hvd.init() first, with Horovod built "
        "with MPI and launched by mpirun or horovodrun --mpi (Gloo gives no MPI).");
  int level = 0;
  MPI_Query_thread(&level);
  if (level < MPI_THREAD_MULTIPLE)
    throw std::runtime_error(
        "ring allreduce: MPI runs at thread level " + std::to_string(level) +
        ", below MPI_THREAD_MULTIPLE (" + std::to_string(MPI_THREAD_MULTIPLE) +
        "): the ring's thread and Horovod's would both call MPI. Unset "
        "HOROVOD_MPI_THREADS_DISABLE, or use an MPI built with thread support.");
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
  check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

void RingEngine::set_device_kernels(const DeviceKernels& kernels, DeviceTransport transport) {
  if (!kernels.complete())
    throw std::invalid_argument("ring allreduce: incomplete table of CUDA kernels");
  std::lock_guard<std::mutex> lock(mu_);
  if (pending_ > 0) throw std::runtime_error("ring allreduce: an exchange is in flight");
  device_side_.reset();   // it refers to the old table
  kernels_ = std::make_unique<DeviceKernels>(kernels);
  cuda_aware_ = transport == DeviceTransport::kCudaAware ||
                (transport == DeviceTransport::kAuto && mpi_is_cuda_aware());
}

size_t RingEngine::device_scratch_bytes(int64_t numel, double ratio) const {
  if (!kernels_) throw std::runtime_error("ring allreduce: no CUDA kernels were given");
  return scalecom::device_scratch_bytes(*kernels_, numel, size_, ratio);
}

RingEngine::~RingEngine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) {
    if (broken_) worker_.detach();  // stuck in MPI: leave it, never block the exit
    else worker_.join();
  }
  if (broken_) {
    // The detached thread may still use them: leak rather than free.
    (void)device_side_.release();
    (void)host_side_.release();
    (void)kernels_.release();
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && !broken_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void RingEngine::start(std::vector<RingTensor> tensors, double ratio, float beta,
                       int num_threads) {
  std::lock_guard<std::mutex> lock(mu_);
  if (broken_)
    throw std::runtime_error("ring allreduce: an earlier exchange timed out; the engine "
                             "cannot be used again");
  for (const RingTensor& t : tensors) {
    if (t.device >= 0 && !kernels_)
      throw std::runtime_error("ring allreduce: a tensor on a GPU, but no CUDA kernels were "
                               "given (set_device_kernels)");
    if (t.device != tensors.front().device)
      throw std::invalid_argument(
          "ring allreduce: one exchange takes host tensors or the tensors of one GPU, not "
          "tensors on " + where(tensors.front().device) + " and " + where(t.device));
  }
  queue_.push_back(Job{std::move(tensors), ratio, beta, num_threads});
  ++pending_;
  if (!worker_.joinable()) worker_ = std::thread(&RingEngine::serve, this);
  cv_.notify_all();
}

bool RingEngine::wait(double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  auto limit = std::chrono::duration<double>(timeout_s);
  if (!cv_.wait_for(lock, limit, [this] { return pending_ == 0; })) {
    broken_ = true;
    return false;
  }
  last_timings_ = timings_;
  last_bytes_ = bytes_;
  last_nonfinite_ = nonfinite_;
  timings_ = Timings{};
  bytes_ = nonfinite_ = 0;
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
  return true;
}

bool RingEngine::close(double timeout_s) {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return true;
  if (!wait(timeout_s) || !finish_sends(timeout_s)) return false;
  if (size_ == 1) return true;
  // A dissemination barrier: in round r every rank sends a token to rank + 2^r
  // and receives one from rank - 2^r; after ceil(log2 n) rounds every rank has
  // heard, directly or not, from every other.
  const int tag = max_tag();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  // On the heap: a timed-out receive stays posted and may still land here.
  std::unique_ptr<char[]> tokens(new char[2]());
  for (int step = 1; step < size_; step <<= 1) {
    MPI_Request requests[2];
    check_mpi(MPI_Irecv(&tokens[1], 1, MPI_CHAR, (rank_ - step + size_) % size_, tag, comm_,
                        &requests[0]),
              "MPI_Irecv");
    check_mpi(MPI_Isend(&tokens[0], 1, MPI_CHAR, (rank_ + step) % size_, tag, comm_,
                        &requests[1]),
              "MPI_Isend");
    for (int done = 0; !done;) {
      check_mpi(MPI_Testall(2, requests, &done, MPI_STATUSES_IGNORE), "MPI_Testall");
      if (!done && std::chrono::steady_clock::now() > deadline) {
        std::lock_guard<std::mutex> lock(mu_);
        broken_ = true;   // messages stay posted: never free the communicator or the tokens
        (void)tokens.release();
        return false;
      }
      if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  return true;
}

// The engine's thread: runs the queued exchanges in order. After an error the
// rest of the queue is dropped (the peers fail or time out on their own), and
// wait() reports the first error.
void RingEngine::serve() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;   // stopping, nothing left
    Job job = std::move(queue_.front());
    queue_.pop_front();
    const bool skip = error_ != nullptr;
    lock.unlock();
    std::exception_ptr error;
    if (!skip) {
      const auto begin = std::chrono::steady_clock::now();
      try {
        exchange(job.tensors, job.ratio, job.beta, job.num_threads);
      } catch (...) {
        error = std::current_exception();
      }
      timings_.busy +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
      ++timings_.exchanges;
    }
    lock.lock();
    if (error && !error_) error_ = error;
    --pending_;
    cv_.notify_all();
  }
}

void RingEngine::sendrecv(const void* send, int64_t send_bytes, void* recv,
                          int64_t recv_bytes) {
  if (send_bytes > INT_MAX || recv_bytes > INT_MAX)
    throw std::runtime_error("ring allreduce: a fused message exceeds 2 GiB; exchange "
                             "fewer tensors per step");
  const int right = (rank_ + 1) % size_, left = (rank_ + size_ - 1) % size_;
  MPI_Status status;
  check_mpi(MPI_Sendrecv(send, static_cast<int>(send_bytes), MPI_BYTE, right, 0, recv,
                         static_cast<int>(recv_bytes), MPI_BYTE, left, 0, comm_, &status),
            "MPI_Sendrecv");
  int got = 0;
  MPI_Get_count(&status, MPI_BYTE, &got);
  if (got != recv_bytes)
    throw std::runtime_error("ring allreduce: expected " + std::to_string(recv_bytes) +
                             " bytes from rank " + std::to_string(left) + ", got " +
                             std::to_string(got));
  bytes_ += send_bytes;
}

// Every rank must pass the same tensors (count, sizes, steps) and ratio;
// compared with one small allreduce, so a mismatch fails on every rank.
void RingEngine::check_agreement(const std::vector<RingTensor>& tensors, double ratio) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  mix(tensors.size());
  uint64_t ratio_bits;
  std::memcpy(&ratio_bits, &ratio, sizeof ratio_bits);
  mix(ratio_bits);
  for (const auto& t : tensors) {
    mix(static_cast<uint64_t>(t.numel));
    mix(static_cast<uint64_t>(t.step));
  }
  uint64_t local[2] = {h, ~h}, global[2];
  check_mpi(MPI_Allreduce(local, global, 2, MPI_UINT64_T, MPI_MIN, comm_), "MPI_Allreduce");
  if (global[0] != h || ~global[1] != h)
    throw std::runtime_error(
        "ring allreduce: ranks passed different tensors (count, sizes or steps) or ratios "
        "to the same exchange; every rank must compress the same parameters");
}

Side& RingEngine::side_for(const std::vector<RingTensor>& tensors, int num_threads) {
  const int device = tensors.empty() ? -1 : tensors.front().device;
  if (device < 0) {
    if (!host_side_) host_side_ = host_side(num_threads);   // its messages are kept
    host_side_->set_threads(num_threads);
    return *host_side_;
  }
  if (!device_side_ || device_side_->device() != device) {
    device_side_.reset();
    device_side_ = std::make_unique<DeviceSide>(*kernels_, device, cuda_aware_);
  }
  device_side_->prepare(static_cast<int>(tensors.size()));
  return *device_side_;
}

}  // namespace scalecom
