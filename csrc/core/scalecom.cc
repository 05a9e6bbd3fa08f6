#include "scalecom.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"
#include "topk_histogram.h"

namespace scalecom {
namespace {

using detail::block;
using detail::thread_id;
using detail::threads_for;
using detail::select_by_histogram;
using detail::taken;

inline uint32_t bits_of(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

// The bits of |x| as uint32 order exactly like |x|, with NaN above +inf.
inline uint32_t magnitude_key(float x) { return bits_of(x) & 0x7FFFFFFFu; }

// The sampled threshold: the common case of select_topk in one pass.
//
// A pseudo-random sample of contiguous runs of keys gives tau, a key that
// slightly more than k of all keys reach; one pass collects the indices whose key is at
// least tau (branch-free, per thread, in index order), and the exact top-k
// is then picked among those candidates alone. Since every key at or above
// the k-th largest is a candidate whenever at least k keys reach tau, the
// result is the exact top-k, the same bits as the histogram path. It gives
// up (false, nothing written) when fewer than k or more than about 4k keys
// reach tau (heavy ties, a sample far off); the caller then runs the
// histogram path.
constexpr int64_t kSampleRuns = 1024, kRun = 64;

// tau, the sample's r-th largest key, or false where the tensor is too small
// for a sample or k too large for one to pay.
template <typename KeyAt>
bool sample_tau(KeyAt key_at, int64_t numel, int64_t k, uint32_t* tau) {
  const int64_t runs = std::min<int64_t>(kSampleRuns, numel / (16 * kRun));
  if (runs < 64 || 8 * k > numel) return false;
  const int64_t stride = numel / runs;
  std::vector<uint32_t> sample;
  sample.reserve(runs * kRun);
  uint64_t state = 0x9E3779B97F4A7C15ull;   // fixed: the same sample on every call
  for (int64_t b = 0; b < runs; ++b) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const int64_t start = b * stride + static_cast<int64_t>((state >> 33) % (stride - kRun + 1));
    for (int64_t j = start; j < start + kRun; ++j) sample.push_back(key_at(j));
  }
  const int64_t size = static_cast<int64_t>(sample.size());
  // At least k keys reach tau unless r or more sampled keys reach the k-th
  // largest key: their count is about Binomial(size, k / numel), of mean mu;
  // r = mu + 4 sqrt(mu) + 2 makes that rare while about
  // k + 4 sqrt(mu) numel / size keys reach tau.
  const double mu = static_cast<double>(k) * size / numel;
  const int64_t r = static_cast<int64_t>(std::ceil(mu + 4.0 * std::sqrt(mu) + 2.0));
  if (r > size) return false;
  std::nth_element(sample.begin(), sample.begin() + (r - 1), sample.end(),
                   std::greater<uint32_t>());
  *tau = sample[r - 1];
  return true;
}

// Each thread's indices whose key reaches tau, in index order: count[t] of
// them, of which at most `cap` are written to cand[t] (count[t] > cap means
// the thread ran out of room).
template <typename KeyAt>
void collect_reaching(KeyAt key_at, int64_t numel, int nt, uint32_t tau, int64_t cap,
                      std::vector<std::unique_ptr<int32_t[]>>* cand,
                      std::vector<int64_t>* count) {
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    int64_t lo, hi;
    block(numel, nt, tid, &lo, &hi);
    (*cand)[tid].reset(new int32_t[cap + 1]);
    int32_t* c = (*cand)[tid].get();
    int64_t total = 0, at = 0;
    auto visit = [&](int64_t j) {
      c[at] = static_cast<int32_t>(j);   // kept only if it reaches tau; c[cap] is a sink
      total += key_at(j) >= tau;
      at = total < cap ? total : cap;
    };
    // Runs of 16 keys are first tested together (a loop the compiler
    // vectorises; keys are 31-bit, so signed compares order them): about 2k
    // keys of numel reach tau, so most runs hold none and cost no stores.
    constexpr int kLanes = 16;
    const auto reach = static_cast<int32_t>(tau);
    int64_t j = lo;
    for (; j + kLanes <= hi; j += kLanes) {
      int32_t any = 0;
      for (int q = 0; q < kLanes; ++q) any |= static_cast<int32_t>(key_at(j + q)) >= reach;
      if (any)
        for (int q = 0; q < kLanes; ++q) visit(j + q);
    }
    for (; j < hi; ++j) visit(j);
    (*count)[tid] = total;
  }
}

template <typename KeyAt>
bool select_by_sample(KeyAt key_at, int64_t numel, int64_t k, int32_t* out_indices, int nt) {
  uint32_t tau;
  if (!sample_tau(key_at, numel, k, &tau)) return false;
  const int64_t cap = 4 * k + 4096;
  std::vector<std::unique_ptr<int32_t[]>> cand(nt);
  std::vector<int64_t> count(nt, 0);
  collect_reaching(key_at, numel, nt, tau, cap, &cand, &count);
  int64_t found = 0;
  for (int t = 0; t < nt; ++t) {
    if (count[t] > cap) return false;
    found += count[t];
  }
  if (found < k) return false;

  // The k-th largest candidate key, and how many of the keys equal to it are
  // taken (lowest index first).
  std::vector<uint32_t> keys;
  keys.reserve(found);
  for (int t = 0; t < nt; ++t)
    for (int64_t q = 0; q < count[t]; ++q) keys.push_back(key_at(cand[t][q]));
  std::vector<uint32_t> order(keys);
  std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), std::greater<uint32_t>());
  const uint32_t threshold = order[k - 1];
  int64_t ties_left = k;
  for (uint32_t key : keys) ties_left -= key > threshold;
  int64_t written = 0, pos = 0;
  for (int t = 0; t < nt; ++t) {
    for (int64_t q = 0; q < count[t]; ++q, ++pos) {
      if (taken(keys[pos], threshold, &ties_left)) out_indices[written++] = cand[t][q];
    }
  }
  if (written != k)
    throw std::logic_error("scalecom::select_topk: sampled path selected " +
                           std::to_string(written) + " indices instead of " + std::to_string(k));
  return true;
}


}  // namespace

int64_t num_selected(int64_t numel, double ratio) {
  if (numel <= 0) return 0;
  if (!(ratio > 0.0 && ratio <= 1.0))
    throw std::invalid_argument("ratio must lie in (0, 1], got " + std::to_string(ratio));
  int64_t k = static_cast<int64_t>(std::ceil(ratio * static_cast<double>(numel)));
  return std::min(numel, std::max<int64_t>(1, k));
}

void select_topk(const float* memory, const float* grad, int64_t numel, int64_t k,
                 int32_t* out_indices, int num_threads) {
  if (numel < 0 || numel > INT32_MAX)
    throw std::invalid_argument("select_topk: numel " + std::to_string(numel) +
                                " outside [0, 2^31 - 1] (indices are int32)");
  if (k < 0 || k > numel)
    throw std::invalid_argument("select_topk: k=" + std::to_string(k) +
                                " outside [0, numel=" + std::to_string(numel) + "]");
  if (k == 0) return;
  const int nt = threads_for(numel, num_threads);
  auto key_at = [&](int64_t j) { return magnitude_key(memory[j] + grad[j]); };
  if (select_by_sample(key_at, numel, k, out_indices, nt)) return;
  select_by_histogram(key_at, numel, k, out_indices, nt);
}

int64_t first_bad_index(const int32_t* indices, int64_t k, int64_t lo, int64_t hi) {
  for (int64_t i = 0; i < k; ++i) {
    if (indices[i] < lo || indices[i] >= hi || (i > 0 && indices[i] <= indices[i - 1])) return i;
  }
  return -1;
}

namespace {

// One pass over memory and grad for an ascending, unique index set I: the
// low-pass update (m_j += beta g_j off I, m_j *= 1 - beta on I) with the
// non-finite policy; off(j) and on(i, j) add what a caller writes besides,
// each called before m_j changes.
template <typename Off, typename On>
int64_t low_pass_sweep(float* memory, const float* grad, int64_t numel, const int32_t* indices,
                       int64_t k, float beta, int num_threads, Off off, On on) {
  if (k < 0 || k > numel)
    throw std::invalid_argument("k=" + std::to_string(k) + " outside [0, numel=" +
                                std::to_string(numel) + "]");
  if (!(beta > 0.0f && beta <= 1.0f))
    throw std::invalid_argument("beta must lie in (0, 1], got " + std::to_string(beta));
  const int64_t bad = first_bad_index(indices, k, 0, numel);
  if (bad >= 0)
    throw std::invalid_argument(
        "indices must be ascending, unique and in [0, " + std::to_string(numel) +
        "); entry " + std::to_string(bad) + " is " + std::to_string(indices[bad]));
  const float decay = 1.0f - beta;
  const int nt = threads_for(numel, num_threads);
  int64_t dropped = 0;
#pragma omp parallel num_threads(nt) reduction(+ : dropped)
  {
    const int tid = thread_id();
    int64_t lo, hi;
    block(numel, nt, tid, &lo, &hi);
    // This block's selected entries, found by binary search in the sorted I.
    int64_t i = std::lower_bound(indices, indices + k, lo) - indices;
    const int64_t i_end = std::lower_bound(indices, indices + k, hi) - indices;
    int64_t j = lo;
    for (; i <= i_end; ++i) {
      const int64_t stop = i < i_end ? indices[i] : hi;
      // A non-finite result is not absorbed: the memory keeps its value. Bit
      // tests and a 32-bit count keep this loop vectorised.
      uint32_t refused = 0;
      for (; j < stop; ++j) {
        const float g = grad[j];
        off(j);
        const float updated = memory[j] + beta * g;
        const uint32_t bad = (bits_of(updated) & 0x7F800000u) == 0x7F800000u;
        memory[j] = bad ? memory[j] : updated;
        refused += bad;
      }
      dropped += refused;
      if (i == i_end) break;
      on(i, j);
      memory[j] = decay * memory[j];
      ++j;
    }
  }
  return dropped;
}

}  // namespace

int64_t gather_and_update(float* memory, const float* grad, int64_t numel,
                          const int32_t* indices, int64_t k, float beta,
                          float* values, int num_threads) {
  try {
    return low_pass_sweep(memory, grad, numel, indices, k, beta, num_threads,
                          [](int64_t) {},
                          [&](int64_t i, int64_t j) { values[i] = memory[j] + grad[j]; });
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("gather_and_update: ") + e.what());
  }
}

int64_t update_and_scatter(float* memory, const float* grad, float* out, int64_t numel,
                           const int32_t* indices, int64_t k, float beta, const float* means,
                           int num_threads) {
  try {
    return low_pass_sweep(memory, grad, numel, indices, k, beta, num_threads,
                          [&](int64_t j) { out[j] = 0.0f; },
                          [&](int64_t i, int64_t j) { out[j] = means[i]; });
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("update_and_scatter: ") + e.what());
  }
}

void scatter(const int32_t* indices, const float* values, int64_t k,
             float* out, int64_t numel, int num_threads) {
  for (int64_t i = 0; i < k; ++i)
    if (indices[i] < 0 || indices[i] >= numel)
      throw std::invalid_argument("scatter: index " + std::to_string(indices[i]) +
                                  " outside [0, " + std::to_string(numel) + ")");
  const int nt = threads_for(numel, num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t j = 0; j < numel; ++j) out[j] = 0.0f;
  for (int64_t i = 0; i < k; ++i) out[indices[i]] = values[i];
}

}  // namespace scalecom
