// One exchange of the compressed ring (RingEngine::exchange), phase by phase:
// the plans, the selection of each rank's own chunk, the reduce-scatter, the
// start of the allgather and the allgather. The engine's lifecycle, queue and
// MPI plumbing are in ring.cc.
//
// Fused messages: each tensor's segment holds the chunk this rank forwards,
// its k indices then its k values in the reduce-scatter, its k values in the
// allgather. A received message, worked on in place, is the next one sent.
#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include "buffers.h"
#include "ring.h"

namespace scalecom {
namespace {

inline int64_t mod(int64_t a, int64_t n) { return ((a % n) + n) % n; }

// One tensor's plan for a step: chunk bounds, k per chunk, and the chunk
// whose partial (then complete) sum this rank holds.
struct Plan {
  RingTensor t;
  std::unique_ptr<Buffers> buffers;
  std::vector<int64_t> bounds;
  std::vector<int64_t> k;
  std::vector<int64_t> first;   // chunk j's place in the union of index sets (prefix sums of k)
  int64_t held = 0;
};

// Adds the time since the last lap to one phase of the breakdown.
class Laps {
 public:
  void lap(double* phase) {
    const auto now = std::chrono::steady_clock::now();
    *phase += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

// The plans of a step, with the side's message room reserved for the largest
// hop.
std::vector<Plan> make_plans(const std::vector<RingTensor>& tensors, Side& side, int64_t n,
                             double ratio) {
  std::vector<Plan> plans(tensors.size());
  size_t words = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    Plan& p = plans[i];
    p.t = tensors[i];
    p.buffers = side.buffers(p.t, n, ratio, static_cast<int>(i));
    chunk_plan(p.t.numel, n, ratio, &p.bounds, &p.k);
    p.first.assign(n + 1, 0);
    for (int64_t c = 0; c < n; ++c) p.first[c + 1] = p.first[c] + p.k[c];
    words += 2 * *std::max_element(p.k.begin(), p.k.end());
  }
  side.reserve(words);
  return plans;
}

// The chunk this rank owns at each tensor's step: select, and start its sum.
// Returns the words of the first message.
size_t select_own(std::vector<Plan>& plans, Side& side, int64_t r, int64_t n) {
  size_t send_words = 0;
  for (Plan& p : plans) {
    const int64_t j = mod(r - p.t.step, n), k = p.k[j];
    auto* idx = reinterpret_cast<int32_t*>(side.send() + send_words);
    auto* values = reinterpret_cast<float*>(side.send() + send_words + k);
    p.buffers->select(p.bounds[j], p.bounds[j + 1], k, idx, values);
    p.buffers->keep_indices(p.first[j], idx, k);
    p.held = j;
    send_words += 2 * k;
  }
  return send_words;
}

// Hop h receives the chunk owned by rank r - h. `hop` moves one message.
template <typename Hop>
void reduce_scatter(std::vector<Plan>& plans, Side& side, int64_t r, int64_t n,
                    size_t send_words, Hop hop, Laps& laps, RingEngine::Timings& time) {
  for (int64_t h = 1; h < n; ++h) {
    size_t recv_words = 0;
    for (const Plan& p : plans) recv_words += 2 * p.k[mod(r - h - p.t.step, n)];
    hop(send_words, recv_words);
    laps.lap(&time.mpi_rs);
    size_t at = 0;
    for (Plan& p : plans) {
      const int64_t j = mod(r - h - p.t.step, n), k = p.k[j];
      auto* idx = reinterpret_cast<const int32_t*>(side.recv() + at);
      auto* values = reinterpret_cast<float*>(side.recv() + at + k);
      p.buffers->accumulate(p.bounds[j], p.bounds[j + 1], idx, k, values);
      p.buffers->keep_indices(p.first[j], idx, k);
      p.held = j;
      at += 2 * k;
    }
    side.swap();
    send_words = recv_words;
    laps.lap(&time.reduce);
  }
}

// This rank now holds the complete sum of the chunk owned by rank r + 1: its
// mean, and the values alone start the allgather. Returns the words of the
// first allgather message.
size_t start_allgather(std::vector<Plan>& plans, Side& side, float n_f) {
  size_t at = 0, send_words = 0;
  for (Plan& p : plans) {
    const int64_t k = p.k[p.held];
    const uint32_t* sums = side.send() + at + k;
    p.buffers->keep_means(p.first[p.held], reinterpret_cast<const float*>(sums), k, n_f);
    side.copy(side.recv() + send_words, sums, k);
    at += 2 * k;
    send_words += k;
  }
  side.swap();
  return send_words;
}

// Hop h receives the sum of the chunk owned by r + 1 - h.
template <typename Hop>
void allgather(std::vector<Plan>& plans, Side& side, int64_t r, int64_t n, size_t send_words,
               Hop hop, Laps& laps, RingEngine::Timings& time) {
  const float n_f = static_cast<float>(n);
  for (int64_t h = 1; h < n; ++h) {
    size_t recv_words = 0;
    for (const Plan& p : plans) recv_words += p.k[mod(r + 1 - h - p.t.step, n)];
    hop(send_words, recv_words);
    laps.lap(&time.mpi_ag);
    size_t at = 0;
    for (Plan& p : plans) {
      const int64_t j = mod(r + 1 - h - p.t.step, n), k = p.k[j];
      p.buffers->keep_means(p.first[j], reinterpret_cast<const float*>(side.recv() + at), k,
                            n_f);
      p.held = j;
      at += k;
    }
    side.swap();
    send_words = recv_words;
    laps.lap(&time.unpack);
  }
}

}  // namespace

void RingEngine::hop_exchange(Side& side, size_t send_words, size_t recv_words) {
  const int64_t send_bytes = 4 * static_cast<int64_t>(send_words);
  const int64_t recv_bytes = 4 * static_cast<int64_t>(recv_words);
  const void* out = side.outgoing(send_bytes);
  sendrecv(out, send_bytes, side.incoming(), recv_bytes);
  side.arrived(recv_bytes);
}

void RingEngine::exchange(std::vector<RingTensor>& tensors, double ratio, float beta,
                          int num_threads) {
  Timings& time = timings_;
  Laps laps;
  check_agreement(tensors, ratio);
  laps.lap(&time.agree);
  const int64_t n = size_, r = rank_;

  Side& side = side_for(tensors, num_threads);
  std::vector<Plan> plans = make_plans(tensors, side, n, ratio);
  const size_t own_words = select_own(plans, side, r, n);
  side.wait();
  laps.lap(&time.select);

  auto hop = [this, &side](size_t send_words, size_t recv_words) {
    hop_exchange(side, send_words, recv_words);
  };
  reduce_scatter(plans, side, r, n, own_words, hop, laps, time);
  const size_t mean_words = start_allgather(plans, side, static_cast<float>(n));
  laps.lap(&time.pack);
  allgather(plans, side, r, n, mean_words, hop, laps, time);

  // No barrier here: the next exchange's agreement check orders the ranks,
  // and close() keeps any rank from finalizing MPI while a peer still
  // receives from it.
  for (Plan& p : plans) p.buffers->finish(beta);
  side.wait();
  for (Plan& p : plans) nonfinite_ += p.buffers->nonfinite();
  laps.lap(&time.update);
}

}  // namespace scalecom
