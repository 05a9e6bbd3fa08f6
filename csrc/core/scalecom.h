// ScaleCom's framework-free core: exact top-k selection of |m + g|, the fused
// gather + low-pass memory update, and the scatter. The torch and TensorFlow
// bindings are thin adapters over these functions, so both frontends produce
// the same bits. The canonical arithmetic (docs/algorithm.md, "One step"):
//
//   p   = m + g                           float32
//   I   = top-k of |p|, ties -> lower index, ascending
//   c   = p[I]
//   m_j = m_j + beta * g_j                j not in I
//   m_j = (1 - beta) * m_j                j in I, (1 - beta) rounded to float32
//   (a non-finite m_j + beta * g_j leaves m_j as it was)
//
// Errors are reported as std::invalid_argument; nothing here aborts.
#pragma once

#include <cstdint>

namespace scalecom {

// k = max(1, ceil(ratio * numel)) for numel > 0, 0 for numel == 0.
int64_t num_selected(int64_t numel, double ratio);

// Writes the k indices of the largest |memory + grad| to out_indices, in
// ascending order; equal magnitudes are taken lowest index first. NaN counts
// as larger than +inf. O(numel) work and no sort. Usually one pass: a sample
// of |p| gives a threshold about 2k keys reach, one pass collects them, and
// the exact top-k is picked among those. Where that does not hold (small
// tensors, heavy ties, large k) a histogram pass over the top bits of |p|, a
// pass that collects the indices above the k-th largest bin and the
// candidates inside it, and a radix refinement on the candidates. Both give
// the same, exact result.
void select_topk(const float* memory, const float* grad, int64_t numel, int64_t k,
                 int32_t* out_indices, int num_threads);

// In one pass over memory and grad: values[i] = memory[I[i]] + grad[I[i]] and
// the low-pass update of the memory. `indices` must be ascending, unique and
// in [0, numel); this is checked (O(k)) before anything is written.
// Non-finite policy: a NaN or Inf reaches `values` (so the caller's output
// shows it) but never the memory: where m + beta * g is not finite the entry
// keeps its value. Returns how many entries were kept that way.
int64_t gather_and_update(float* memory, const float* grad, int64_t numel,
                          const int32_t* indices, int64_t k, float beta,
                          float* values, int num_threads);

// The compressed ring's last pass over a tensor (the ScaleCom ring), in one sweep: the
// low-pass update of gather_and_update for the ascending index set I (the
// ring already has the values), and out = the dense mean: means[i] at I[i],
// zero elsewhere. `out` may be `grad` itself: each element is read before it
// is written, so the ring can hand the mean back in the gradient's storage.
// Returns the entries kept by the non-finite policy.
int64_t update_and_scatter(float* memory, const float* grad, float* out, int64_t numel,
                           const int32_t* indices, int64_t k, float beta, const float* means,
                           int num_threads);

// The first entry of indices[0..k) outside [lo, hi) or not above its
// predecessor, or -1: the check of an index set that came from elsewhere
// (another rank, a framework tensor) before anything trusts it.
int64_t first_bad_index(const int32_t* indices, int64_t k, int64_t lo, int64_t hi);

// out[I[i]] = values[i]; every other element of out is set to zero.
void scatter(const int32_t* indices, const float* values, int64_t k,
             float* out, int64_t numel, int num_threads);

}  // namespace scalecom
