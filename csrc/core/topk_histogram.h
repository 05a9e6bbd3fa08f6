// The exact path of scalecom::select_topk (scalecom.cc), for where the sampled
// threshold gives up: a histogram of the keys' top bits, a pass that collects
// the indices above the k-th largest bin and the candidates inside it, and a
// radix refinement on the candidates. Also the radix digits and the tie rule
// that the sampled path shares. Internal to csrc/core; a header (not a .cc)
// so that tests/abi_double, which compiles scalecom.cc alone, keeps building.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"

namespace scalecom {
namespace detail {

// Radix levels over the 31 key bits, most significant first.
constexpr int kLevels = 3;
constexpr int kShift[kLevels] = {20, 9, 0};
constexpr uint32_t kMask[kLevels] = {0x7FFu, 0x7FFu, 0x1FFu};
constexpr int kBins = 2048;

// Finds the bin, scanning from the top, in which the `need`-th largest key
// falls; returns it and the count of keys in higher bins via `above`.
inline int find_bin(const int64_t* hist, int64_t need, int64_t* above) {
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

// Whether a candidate of key `key` is taken, given the k-th largest key
// (`threshold`) and how many keys equal to it are still to take: the rule of
// both selection paths, ties to the lowest index (candidates are visited in
// ascending order).
inline bool taken(uint32_t key, uint32_t threshold, int64_t* ties_left) {
  if (key > threshold) return true;
  if (key != threshold || *ties_left == 0) return false;
  --*ties_left;
  return true;
}

// The histogram path of select_topk, phase by phase. Each thread owns one
// contiguous block throughout, so every list below is in ascending index
// order within a thread and the threads' lists concatenate in index order.
using Histograms = std::vector<std::array<uint32_t, 4 * kBins>>;

// Pass 1: histogram of the keys' top bits. Four interleaved sub-histograms
// break the store-to-load chains on the few bins that gradients crowd into.
template <typename KeyAt>
Histograms top_bits_histograms(KeyAt key_at, int64_t numel, int nt) {
  Histograms hists(nt);
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    int64_t lo, hi;
    block(numel, nt, tid, &lo, &hi);
    auto& h = hists[tid];
    h.fill(0);
    int64_t j = lo;
    for (; j + 4 <= hi; j += 4) {
      ++h[0 * kBins + (key_at(j) >> kShift[0])];
      ++h[1 * kBins + (key_at(j + 1) >> kShift[0])];
      ++h[2 * kBins + (key_at(j + 2) >> kShift[0])];
      ++h[3 * kBins + (key_at(j + 3) >> kShift[0])];
    }
    for (; j < hi; ++j) ++h[key_at(j) >> kShift[0]];
  }
  return hists;
}

// Pass 2: indices certainly selected (higher top bits than `top_bin`) and the
// candidates (equal top bits). The per-thread histograms give exact sizes, so
// the loop writes unconditionally and advances by the comparison: no branch
// to mispredict.
template <typename KeyAt>
void collect_pass(KeyAt key_at, int64_t numel, int nt, const Histograms& hists,
                  uint32_t top_bin, std::vector<std::vector<int32_t>>* sure,
                  std::vector<std::vector<int32_t>>* cand) {
  sure->assign(nt, {});
  cand->assign(nt, {});
  for (int t = 0; t < nt; ++t) {
    int64_t n_sure = 0, n_cand = 0;
    for (int b = 0; b < 4 * kBins; ++b) {
      const uint32_t bin = static_cast<uint32_t>(b % kBins);
      n_sure += bin > top_bin ? hists[t][b] : 0;
      n_cand += bin == top_bin ? hists[t][b] : 0;
    }
    (*sure)[t].resize(n_sure + 1);  // +1: the slot written by a rejected index
    (*cand)[t].resize(n_cand + 1);
  }
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    int64_t lo, hi;
    block(numel, nt, tid, &lo, &hi);
    int32_t* s = (*sure)[tid].data();
    int32_t* c = (*cand)[tid].data();
    int64_t ns = 0, nc = 0;
    for (int64_t j = lo; j < hi; ++j) {
      const uint32_t bin = key_at(j) >> kShift[0];
      s[ns] = static_cast<int32_t>(j);
      ns += bin > top_bin;
      c[nc] = static_cast<int32_t>(j);
      nc += bin == top_bin;
    }
    (*sure)[tid].resize(ns);
    (*cand)[tid].resize(nc);
  }
}

// The k-th largest key, refined from its top bits on the candidates alone
// (lower radix digits); `need` (how many keys at or below the top bin are
// still to take) becomes how many keys equal to it are taken.
inline uint32_t refine_threshold(const std::vector<uint32_t>& cand_keys, uint32_t top_bin,
                          int64_t* need) {
  std::array<int64_t, kBins> hist;
  int64_t above = 0;
  uint32_t prefix = top_bin;
  for (int level = 1; level < kLevels; ++level) {
    hist.fill(0);
    for (uint32_t key : cand_keys)
      if ((key >> kShift[level - 1]) == prefix) ++hist[(key >> kShift[level]) & kMask[level]];
    const uint32_t bin = static_cast<uint32_t>(find_bin(hist.data(), *need, &above));
    *need -= above;
    prefix = (prefix << (kShift[level - 1] - kShift[level])) | bin;
  }
  return prefix;
}

// For select_topk where the sampled threshold gives up: exact whatever the
// distribution of the keys, at the cost of two passes.
template <typename KeyAt>
void select_by_histogram(KeyAt key_at, int64_t numel, int64_t k, int32_t* out_indices, int nt) {
  Histograms hists = top_bits_histograms(key_at, numel, nt);
  std::array<int64_t, kBins> hist{};
  for (const auto& h : hists)
    for (int b = 0; b < 4 * kBins; ++b) hist[b % kBins] += h[b];
  int64_t need = k, above = 0;
  const uint32_t top_bin = static_cast<uint32_t>(find_bin(hist.data(), need, &above));
  need -= above;

  std::vector<std::vector<int32_t>> sure, cand;
  collect_pass(key_at, numel, nt, hists, top_bin, &sure, &cand);
  hists.clear();

  std::vector<uint32_t> cand_keys;
  for (const auto& c : cand)
    for (int32_t j : c) cand_keys.push_back(key_at(j));
  const uint32_t threshold = refine_threshold(cand_keys, top_bin, &need);
  int64_t ties_left = need;   // of the keys equal to threshold, lowest index first

  // Which candidates are taken, and where each thread's output starts.
  std::vector<int64_t> offset(nt + 1, 0);
  std::vector<std::vector<int32_t>> chosen(nt);
  size_t pos = 0;
  for (int t = 0; t < nt; ++t) {
    for (int32_t j : cand[t]) {
      if (taken(cand_keys[pos++], threshold, &ties_left)) chosen[t].push_back(j);
    }
    offset[t + 1] = offset[t] + static_cast<int64_t>(sure[t].size() + chosen[t].size());
  }
  if (offset[nt] != k)
    throw std::logic_error("scalecom::select_topk: selected " + std::to_string(offset[nt]) +
                           " indices instead of " + std::to_string(k));
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    std::merge(sure[tid].begin(), sure[tid].end(), chosen[tid].begin(), chosen[tid].end(),
               out_indices + offset[tid]);
  }
}
}  // namespace detail
}  // namespace scalecom
