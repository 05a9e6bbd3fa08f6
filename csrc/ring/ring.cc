#include "ring.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <stdexcept>

#include "../core/scalecom.h"
#include "buffers.h"

namespace scalecom {
namespace {

void check_mpi(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw std::runtime_error(std::string("ring allreduce: ") + what + " failed: " +
                           std::string(text, len));
}

inline int64_t mod(int64_t a, int64_t n) { return ((a % n) + n) % n; }

// One tensor's plan for a step: chunk bounds, k per chunk, and the index set
// of every chunk as it becomes known.
struct Plan {
  RingTensor t;
  std::unique_ptr<Buffers> buffers;
  std::vector<int64_t> bounds;
  std::vector<int64_t> k;
  std::vector<int64_t> first;   // chunk j's place in the union of index sets (prefix sums of k)
  std::vector<std::vector<int32_t>> indices;
  std::vector<float> means;     // the dense mean at the union's indices, chunk by chunk
  int64_t held = 0;             // chunk whose partial (then complete) sum this rank holds
  std::vector<float> values;    // that sum
};

}  // namespace

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

void RingEngine::set_device_kernels(const DeviceKernels& kernels) {
  if (!kernels.complete())
    throw std::invalid_argument("ring allreduce: incomplete table of CUDA kernels");
  std::lock_guard<std::mutex> lock(mu_);
  if (busy_) throw std::runtime_error("ring allreduce: an exchange is in flight");
  kernels_ = std::make_unique<DeviceKernels>(kernels);
}

size_t RingEngine::device_scratch_bytes(int64_t numel, double ratio) const {
  if (!kernels_) throw std::runtime_error("ring allreduce: no CUDA kernels were given");
  return scalecom::device_scratch_bytes(*kernels_, numel, size_, ratio);
}

RingEngine::~RingEngine() {
  if (worker_.joinable()) {
    if (broken_) worker_.detach();  // stuck in MPI: leave it, never block the exit
    else worker_.join();
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
  if (busy_) throw std::runtime_error("ring allreduce: an exchange is already in flight");
  for (const RingTensor& t : tensors) {
    if (t.device >= 0 && !kernels_)
      throw std::runtime_error("ring allreduce: a tensor on a GPU, but no CUDA kernels were "
                               "given (set_device_kernels)");
  }
  if (worker_.joinable()) worker_.join();
  busy_ = true;
  done_ = false;
  error_ = nullptr;
  worker_ = std::thread(&RingEngine::run, this, std::move(tensors), ratio, beta, num_threads);
}

bool RingEngine::wait(double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!busy_) throw std::runtime_error("ring allreduce: wait() without start()");
  auto limit = std::chrono::duration<double>(timeout_s);
  if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
    broken_ = true;
    return false;
  }
  lock.unlock();
  worker_.join();
  busy_ = false;
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
  return true;
}

void RingEngine::run(std::vector<RingTensor> tensors, double ratio, float beta,
                     int num_threads) {
  try {
    bytes_ = 0;
    nonfinite_ = 0;
    compute_s_ = 0.0;
    exchange(tensors, ratio, beta, num_threads);
    last_bytes_ = bytes_;
    last_nonfinite_ = nonfinite_;
    last_compute_s_ = compute_s_;
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
  }
  std::lock_guard<std::mutex> lock(mu_);
  done_ = true;
  cv_.notify_all();
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

void RingEngine::exchange(std::vector<RingTensor>& tensors, double ratio, float beta,
                          int num_threads) {
  check_agreement(tensors, ratio);
  const int64_t n = size_, r = rank_;
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  const auto select_start = Clock::now();

  std::vector<Plan> plans(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    Plan& p = plans[i];
    p.t = tensors[i];
    p.buffers = p.t.device >= 0 ? device_buffers(p.t, *kernels_, n, ratio)
                                : host_buffers(p.t, num_threads);
    chunk_plan(p.t.numel, n, ratio, &p.bounds, &p.k);
    p.first.assign(n + 1, 0);
    for (int64_t c = 0; c < n; ++c) p.first[c + 1] = p.first[c] + p.k[c];
    p.indices.resize(n);
    // The chunk this rank owns at the tensor's step: select, then start its sum.
    const int64_t j = mod(r - p.t.step, n);
    p.indices[j].resize(p.k[j]);
    p.values.resize(p.k[j]);
    p.buffers->select(p.bounds[j], p.bounds[j + 1], p.k[j], p.indices[j].data(),
                      p.values.data());
    p.held = j;
  }
  compute_s_ += seconds_since(select_start);

  std::vector<uint32_t> send, recv;
  // Reduce-scatter: hop h receives the chunk owned by rank r - h.
  for (int64_t hop = 1; hop < n; ++hop) {
    send.clear();
    int64_t recv_words = 0;
    for (Plan& p : plans) {
      const std::vector<int32_t>& idx = p.indices[p.held];
      send.insert(send.end(), idx.begin(), idx.end());
      const uint32_t* vals = reinterpret_cast<const uint32_t*>(p.values.data());
      send.insert(send.end(), vals, vals + p.values.size());
      recv_words += 2 * p.k[mod(r - hop - p.t.step, n)];
    }
    recv.resize(recv_words);
    sendrecv(send.data(), 4 * static_cast<int64_t>(send.size()), recv.data(), 4 * recv_words);
    size_t at = 0;
    for (Plan& p : plans) {
      const int64_t j = mod(r - hop - p.t.step, n), k = p.k[j];
      std::vector<int32_t>& idx = p.indices[j];
      idx.assign(reinterpret_cast<const int32_t*>(recv.data() + at),
                 reinterpret_cast<const int32_t*>(recv.data() + at + k));
      p.values.resize(k);
      std::memcpy(p.values.data(), recv.data() + at + k, 4 * k);
      at += 2 * k;
      for (int64_t q = 0; q < k; ++q) {
        const int32_t x = idx[q];
        if (x < p.bounds[j] || x >= p.bounds[j + 1] || (q > 0 && x <= idx[q - 1]))
          throw std::runtime_error("ring allreduce: received an index outside its chunk; "
                                   "the ranks disagree on the tensors");
      }
      p.buffers->accumulate(idx.data(), k, p.values.data());
      p.held = j;
    }
  }

  // This rank now holds the complete sum of the chunk owned by rank r + 1.
  const float n_f = static_cast<float>(n);
  auto write_mean = [&](Plan& p, int64_t j, const float* sums) {
    for (int64_t q = 0; q < p.k[j]; ++q) p.means[p.first[j] + q] = sums[q] / n_f;
  };
  for (Plan& p : plans) {
    p.means.assign(p.first[n], 0.0f);
    write_mean(p, p.held, p.values.data());
  }
  // Allgather: values only; hop h receives the sum of the chunk owned by r + 1 - h.
  for (int64_t hop = 1; hop < n; ++hop) {
    send.clear();
    int64_t recv_words = 0;
    for (Plan& p : plans) {
      const uint32_t* vals = reinterpret_cast<const uint32_t*>(p.values.data());
      send.insert(send.end(), vals, vals + p.values.size());
      recv_words += p.k[mod(r + 1 - hop - p.t.step, n)];
    }
    recv.resize(recv_words);
    sendrecv(send.data(), 4 * static_cast<int64_t>(send.size()), recv.data(), 4 * recv_words);
    size_t at = 0;
    for (Plan& p : plans) {
      const int64_t j = mod(r + 1 - hop - p.t.step, n), k = p.k[j];
      p.values.resize(k);
      std::memcpy(p.values.data(), recv.data() + at, 4 * k);
      at += k;
      write_mean(p, j, p.values.data());
      p.held = j;
    }
  }

  // No rank leaves an exchange while a peer still receives from it: a rank
  // that returned, finished training and finalized MPI with a message still
  // in flight made its neighbour hang or crash in the TCP transport (seen
  // under load with Open MPI 4.1). One barrier per step costs a few latencies.
  check_mpi(MPI_Barrier(comm_), "MPI_Barrier");

  // The dense mean and the low-pass memory update for the union of the
  // chunks' index sets (ascending: chunks are contiguous and in order).
  const auto update_start = Clock::now();
  std::vector<int32_t> all;
  for (Plan& p : plans) {
    all.clear();   // chunk by chunk, as `first` places them
    for (const auto& idx : p.indices) all.insert(all.end(), idx.begin(), idx.end());
    nonfinite_ += p.buffers->finish(all, p.means, beta);
  }
  compute_s_ += seconds_since(update_start);
}

}  // namespace scalecom
