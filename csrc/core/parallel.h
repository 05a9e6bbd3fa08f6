// How the core splits a tensor over OpenMP threads: one contiguous block per
// thread, so that every loop visits its elements in index order within a block
// and the results do not depend on the number of threads. Internal to
// csrc/core; a header (not a .cc) so that tests/abi_double, which compiles
// scalecom.cc alone, keeps building.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace scalecom {
namespace detail {

// Below this many elements per thread, threads cost more than they save.
constexpr int64_t kMinPerThread = 1 << 16;

inline int threads_for(int64_t numel, int num_threads) {
  int64_t useful = std::max<int64_t>(1, numel / kMinPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, useful)));
}

inline int thread_id() {
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

}  // namespace detail
}  // namespace scalecom
