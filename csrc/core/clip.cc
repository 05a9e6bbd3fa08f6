#include "clip.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace scalecom {

namespace {

// One block in the canonical order: eight independent chains (named, so that
// they live in registers and the loop pipelines without reassociating
// anything), then the lanes 0..7 in turn.
double block_sum(const float* x, int64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  int64_t full = n - n % kNormLanes;
  for (int64_t i = 0; i < full; i += kNormLanes) {
    const float* p = x + i;
    double d0 = p[0], d1 = p[1], d2 = p[2], d3 = p[3], d4 = p[4], d5 = p[5], d6 = p[6], d7 = p[7];
    a0 += d0 * d0;
    a1 += d1 * d1;
    a2 += d2 * d2;
    a3 += d3 * d3;
    a4 += d4 * d4;
    a5 += d5 * d5;
    a6 += d6 * d6;
    a7 += d7 * d7;
  }
  const float* t = x + full;   // the tail: element j goes to lane j
  int64_t rest = n - full;
  double d;
  if (rest > 0) { d = t[0]; a0 += d * d; }
  if (rest > 1) { d = t[1]; a1 += d * d; }
  if (rest > 2) { d = t[2]; a2 += d * d; }
  if (rest > 3) { d = t[3]; a3 += d * d; }
  if (rest > 4) { d = t[4]; a4 += d * d; }
  if (rest > 5) { d = t[5]; a5 += d * d; }
  if (rest > 6) { d = t[6]; a6 += d * d; }
  return ((((((a0 + a1) + a2) + a3) + a4) + a5) + a6) + a7;
}

}  // namespace

double sum_squares(const float* x, int64_t numel, int num_threads) {
  if (numel <= 0) return 0.0;
  int64_t blocks = (numel + kNormBlock - 1) / kNormBlock;
  std::vector<double> partial(blocks);
  int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, blocks / 4)));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t begin = b * kNormBlock;
    partial[b] = block_sum(x + begin, std::min(kNormBlock, numel - begin));
  }
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) total += partial[b];
  return total;
}

ClipStep relative_clip_step(double sum_sq, double level, double factor, double rho) {
  double norm = std::sqrt(sum_sq);
  if (!std::isfinite(norm) || norm == 0.0) return {norm, level, 1.0f};
  if (!(level > 0.0)) return {norm, norm, 1.0f};  // the first step sets the level
  if (factor <= 0.0) return {norm, rho * level + (1.0 - rho) * norm, 1.0f};
  double limit = factor * level;
  float scale = 1.0f;
  double kept = norm;
  if (norm > limit) {
    scale = static_cast<float>(limit / norm);
    kept = limit;
  }
  return {norm, rho * level + (1.0 - rho) * kept, scale};
}

}  // namespace scalecom
