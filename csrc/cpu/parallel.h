#pragma once
// How the CPU kernels cut work into parallel tasks. Reductions are cut into chunks whose number
// depends only on the problem size and whose sums are added in a fixed order, so results do not
// depend on the thread count or the scheduling.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

// The hot loops are compiled twice, for AVX2 + FMA (x86-64-v3) and for the baseline; the loader
// picks the one the CPU runs. Each is a function of its own, as the attribute requires.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RDA_EXT_HOT_LOOP __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define RDA_EXT_HOT_LOOP
#endif

namespace rda_ext::cpu {

// Elements per parallel task below which threading costs more than it saves.
constexpr int64_t kGrain = 1 << 15;

// Elements per chunk of a reduction: large enough to amortise a task, small enough to balance.
constexpr int64_t kChunk = 1 << 16;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls body(chunk, begin, end) for every chunk of [0, n) of kChunk elements, in parallel.
template <typename F>
void for_each_chunk(int64_t n, F&& body) {
  at::parallel_for(0, ceil_div(n, kChunk), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) body(c, c * kChunk, std::min(n, (c + 1) * kChunk));
  });
}

// Calls body(o, j0, j1) for the row segments [j0, j1) of an outer x inner matrix, cut into
// tasks of about kGrain elements whatever the shape (a few long rows or many short ones).
template <typename F>
void for_each_row_segment(int64_t outer, int64_t inner, F&& body) {
  at::parallel_for(0, outer * inner, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin / inner; o * inner < end; ++o) {
      body(o, std::max(begin - o * inner, int64_t{0}), std::min(end - o * inner, inner));
    }
  });
}

}  // namespace rda_ext::cpu
