#include "scalecom.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace scalecom {
namespace {

// Below this many elements per thread, threads cost more than they save.
constexpr int64_t kMinPerThread = 1 << 16;

int threads_for(int64_t numel, int num_threads) {
  int64_t useful = std::max<int64_t>(1, numel / kMinPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, useful)));
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Contiguous block [begin, end) of thread `tid` out of `nt`.
inline void block(int64_t numel, int nt, int tid, int64_t* begin, int64_t* end) {
  int64_t base = numel / nt, extra = numel % nt;
  *begin = tid * base + std::min<int64_t>(tid, extra);
  *end = *begin + base + (tid < extra ? 1 : 0);
}

// The bits of |x| as uint32 order exactly like |x|, with NaN above +inf.
inline uint32_t magnitude_key(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits & 0x7FFFFFFFu;
}

// Radix levels over the 31 key bits, most significant first.
constexpr int kLevels = 3;
constexpr int kShift[kLevels] = {20, 9, 0};
constexpr uint32_t kMask[kLevels] = {0x7FFu, 0x7FFu, 0x1FFu};
constexpr int kBins = 2048;

// Finds the bin, scanning from the top, in which the `need`-th largest key
// falls; returns it and the count of keys in higher bins via `above`.
int find_bin(const int64_t* hist, int64_t need, int64_t* above) {
  int64_t cum = 0;
  for (int b = kBins - 1; b >= 0; --b) {
    if (cum + hist[b] >= need) {
      *above = cum;
      return b;
    }
    cum += hist[b];
  }
  throw std::logic_error("scalecom::select_topk: histogram holds fewer keys than k");
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
                 int32_t* out_indices, uint32_t* keys, int num_threads) {
  if (numel < 0 || numel > INT32_MAX)
    throw std::invalid_argument("select_topk: numel " + std::to_string(numel) +
                                " outside [0, 2^31 - 1] (indices are int32)");
  if (k < 0 || k > numel)
    throw std::invalid_argument("select_topk: k=" + std::to_string(k) +
                                " outside [0, numel=" + std::to_string(numel) + "]");
  if (k == 0) return;
  const int nt = threads_for(numel, num_threads);

  // Pass 1: keys and the histogram of their top bits, fused.
  std::vector<std::array<int64_t, kBins>> hists(nt);
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    int64_t lo, hi;
    block(numel, nt, tid, &lo, &hi);
    auto& h = hists[tid];
    h.fill(0);
    for (int64_t j = lo; j < hi; ++j) {
      uint32_t key = magnitude_key(memory[j] + grad[j]);
      keys[j] = key;
      ++h[key >> kShift[0]];
    }
  }
  std::array<int64_t, kBins> hist{};
  for (const auto& h : hists)
    for (int b = 0; b < kBins; ++b) hist[b] += h[b];

  int64_t need = k, above = 0;
  uint32_t prefix = static_cast<uint32_t>(find_bin(hist.data(), need, &above));
  need -= above;

  // Pass 2: indices whose top bits equal the chosen bin, in ascending order.
  std::vector<std::vector<int32_t>> parts(nt);
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    int64_t lo, hi;
    block(numel, nt, tid, &lo, &hi);
    auto& part = parts[tid];
    for (int64_t j = lo; j < hi; ++j)
      if ((keys[j] >> kShift[0]) == prefix) part.push_back(static_cast<int32_t>(j));
  }
  std::vector<int32_t> cand;
  for (auto& part : parts) cand.insert(cand.end(), part.begin(), part.end());
  parts.clear();

  // Refine the threshold on the candidates alone.
  for (int level = 1; level < kLevels; ++level) {
    hist.fill(0);
    for (int32_t j : cand) ++hist[(keys[j] >> kShift[level]) & kMask[level]];
    uint32_t bin = static_cast<uint32_t>(find_bin(hist.data(), need, &above));
    need -= above;
    prefix = (prefix << (kShift[level - 1] - kShift[level])) | bin;
    auto keep = std::remove_if(cand.begin(), cand.end(), [&](int32_t j) {
      return ((keys[j] >> kShift[level]) & kMask[level]) != bin;
    });
    cand.erase(keep, cand.end());
  }
  // Now every candidate's key equals the threshold; take the `need` lowest.
  const uint32_t threshold = prefix;
  const int64_t take_equal = need;

  // Pass 3: emit in index order. Each block's share of the ties goes to the
  // lowest blocks first, so the result does not depend on the thread count.
  std::vector<int64_t> greater(nt + 1, 0), equal_quota(nt, 0);
  std::vector<int64_t> equal_count(nt, 0);
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    int64_t lo, hi;
    block(numel, nt, tid, &lo, &hi);
    int64_t gt = 0, eq = 0;
    for (int64_t j = lo; j < hi; ++j) {
      gt += keys[j] > threshold;
      eq += keys[j] == threshold;
    }
    greater[tid + 1] = gt;
    equal_count[tid] = eq;
  }
  std::vector<int64_t> offset(nt + 1, 0);
  int64_t remaining = take_equal;
  for (int t = 0; t < nt; ++t) {
    equal_quota[t] = std::min(remaining, equal_count[t]);
    remaining -= equal_quota[t];
    offset[t + 1] = offset[t] + greater[t + 1] + equal_quota[t];
  }
  if (offset[nt] != k)
    throw std::logic_error("scalecom::select_topk: selected " + std::to_string(offset[nt]) +
                           " indices instead of " + std::to_string(k));
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    int64_t lo, hi;
    block(numel, nt, tid, &lo, &hi);
    int32_t* out = out_indices + offset[tid];
    int64_t quota = equal_quota[tid];
    for (int64_t j = lo; j < hi; ++j) {
      const uint32_t key = keys[j];
      if (key > threshold || (key == threshold && quota > 0)) {
        quota -= key == threshold;
        *out++ = static_cast<int32_t>(j);
      }
    }
  }
}

void gather_and_update(float* memory, const float* grad, int64_t numel,
                       const int32_t* indices, int64_t k, float beta,
                       float* values, int num_threads) {
  if (k < 0 || k > numel)
    throw std::invalid_argument("gather_and_update: k=" + std::to_string(k) +
                                " outside [0, numel=" + std::to_string(numel) + "]");
  if (!(beta > 0.0f && beta <= 1.0f))
    throw std::invalid_argument("gather_and_update: beta must lie in (0, 1], got " +
                                std::to_string(beta));
  for (int64_t i = 0; i < k; ++i) {
    if (indices[i] < 0 || indices[i] >= numel || (i > 0 && indices[i] <= indices[i - 1]))
      throw std::invalid_argument(
          "gather_and_update: indices must be ascending, unique and in [0, " +
          std::to_string(numel) + "); entry " + std::to_string(i) + " is " +
          std::to_string(indices[i]));
  }
  const float decay = 1.0f - beta;
  const int nt = threads_for(numel, num_threads);
#pragma omp parallel num_threads(nt)
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
      for (; j < stop; ++j) memory[j] = memory[j] + beta * grad[j];
      if (i == i_end) break;
      values[i] = memory[j] + grad[j];
      memory[j] = decay * memory[j];
      ++j;
    }
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
