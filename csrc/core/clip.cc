#include "clip.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace scalecom {

namespace {

// One block in the canonical order: eight independent chains (so the loop
// pipelines and vectorises without reassociating anything), then the lanes.
double block_sum(const float* x, int64_t n) {
  double lane[kNormLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t full = n - n % kNormLanes;
  for (int64_t i = 0; i < full; i += kNormLanes) {
    for (int l = 0; l < kNormLanes; ++l) {
      double v = static_cast<double>(x[i + l]);
      lane[l] += v * v;
    }
  }
  for (int64_t i = full; i < n; ++i) {
    double v = static_cast<double>(x[i]);
    lane[i - full] += v * v;
  }
  double total = 0.0;
  for (int l = 0; l < kNormLanes; ++l) total += lane[l];
  return total;
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
