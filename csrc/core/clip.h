// The relative clip of a worker's gradient (ScaleCom's default remedy for
// high learning rates, docs/algorithm.md) and the norm it is built on.
//
// Canonical arithmetic, reproduced by horovod_scalecom.reference.clip:
//
//   s     = sum of g_j^2 in float64, in a fixed order (sum_squares below)
//   norm  = sqrt(s)
//   limit = factor * level
//   scale = float32(limit / norm) where norm > limit, else 1
//   level = rho * level + (1 - rho) * min(norm, limit)     (float64)
//
// The level starts at the first positive finite norm (no clip that step). A
// non-finite or zero norm leaves the gradient and the level alone. factor 0
// turns the clip off and the level follows the unclipped norm (the guard
// still watches it).
#pragma once

#include <cstdint>

namespace scalecom {

// The order of sum_squares: blocks of kNormBlock elements; inside a block,
// lane l (of kNormLanes) adds x[l], x[l + 8], ... in turn; a block's sum adds
// its lanes 0..7 in turn; the total adds the blocks in turn. The squares of
// float32 values are exact in float64, so the order alone fixes the result,
// whatever the number of threads.
constexpr int64_t kNormBlock = 4096;
constexpr int kNormLanes = 8;

double sum_squares(const float* x, int64_t numel, int num_threads);

struct ClipStep {
  double norm;     // the gradient's L2 norm before clipping
  double level;    // the level after this step
  float scale;     // what the gradient is multiplied by (1: not clipped)
};

// One step of the relative clip, from sum_squares of the gradient. level is
// NaN before the first step.
ClipStep relative_clip_step(double sum_sq, double level, double factor, double rho);

}  // namespace scalecom
