// CPU kernel of convergence: one pass over X, L, S and LS_prev summing ||X||^2, ||X - L - S||^2
// and ||LS_prev - L - S||^2 in float64, in fixed chunks so the result is reproducible; for
// convergence_step LS_prev = L + S is written in the same pass (float64 data: right after each
// chunk is summed, from cache, since a chunk whose float64 sum under- or overflows, data beyond
// ~1e+-150, is summed again scaled by its largest magnitude before LS_prev is overwritten).

#include "cpu/parallel.h"
#include "group_norm.h"
#include "kernels.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>

namespace rda_ext::cpu {

namespace {

struct ChunkSums {
  std::array<double, 3> sumsq, max_abs;
};

// ||X||^2, ||X - L - S||^2 and ||P - L - S||^2 over [begin, end), with Scaled of the values
// divided by scale[k] (a division: the reciprocal of a subnormal scale overflows), and the
// largest magnitude of each.
// With WriteP, also P_next[i] = L[i] + S[i] (P_next is P), after P[i] is read.
template <bool Scaled, bool WriteP, typename T>
RDA_EXT_HOT_LOOP ChunkSums chunk_sums(const T* X, const T* L, const T* S, const T* P, T* P_next, int64_t begin,
                                      int64_t end, const double* scale) {
  double xx = 0, r1 = 0, r2 = 0, mx = 0, m1 = 0, m2 = 0;
#pragma omp simd reduction(+ : xx, r1, r2) reduction(max : mx, m1, m2)
  for (int64_t i = begin; i < end; ++i) {
    const double x = X[i], l = L[i], s = S[i], p = P[i];
    double qx = x, q1 = x - l - s, q2 = p - l - s;
    mx = std::max(mx, std::abs(qx));
    m1 = std::max(m1, std::abs(q1));
    m2 = std::max(m2, std::abs(q2));
    if constexpr (Scaled) {
      qx /= scale[0];
      q1 /= scale[1];
      q2 /= scale[2];
    }
    xx += qx * qx;
    r1 += q1 * q1;
    r2 += q2 * q2;
    if constexpr (WriteP) P_next[i] = L[i] + S[i];
  }
  return {{xx, r1, r2}, {mx, m1, m2}};
}

template <typename T>
RDA_EXT_HOT_LOOP void add_into(const T* L, const T* S, T* P, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) P[i] = L[i] + S[i];
}

template <typename T>
void sums(const ConvergenceArgs& a) {
  const T* X = a.X.const_data_ptr<T>();
  const T* L = a.L.const_data_ptr<T>();
  const T* S = a.S.const_data_ptr<T>();
  const T* P = a.P.const_data_ptr<T>();
  T* P_next = a.update ? a.P.mutable_data_ptr<T>() : nullptr;
  const int64_t n = a.X.numel();
  std::vector<std::array<ScaledSumsq, 3>> partial(ceil_div(n, kChunk));
  // Squares of float32 (and narrower) values summed in float64 can neither overflow nor underflow,
  // so their chunks are never summed again and LS_prev is written in the same pass; float64 chunks
  // are written after their sums are known to be usable.
  constexpr bool may_rescale = std::is_same_v<T, double>;
  for_each_chunk(n, [&](int64_t c, int64_t begin, int64_t end) {
    const ChunkSums plain = !may_rescale && P_next ? chunk_sums<false, true, T>(X, L, S, P, P_next, begin, end, nullptr)
                                                   : chunk_sums<false, false, T>(X, L, S, P, nullptr, begin, end, nullptr);
    bool rescale = false;
    for (int k = 0; k < 3; ++k) {
      partial[c][k] = plain_sumsq(plain.sumsq[k]);
      rescale |= needs_rescaled_sum(plain.sumsq[k], plain.max_abs[k]);
    }
    if (rescale) {
      std::array<double, 3> scale{};
      for (int k = 0; k < 3; ++k) {
        const bool usable = plain.max_abs[k] > 0 && plain.max_abs[k] < INFINITY;
        scale[k] = usable ? plain.max_abs[k] : 1;
      }
      const ChunkSums scaled = chunk_sums<true, false, T>(X, L, S, P, nullptr, begin, end, scale.data());
      for (int k = 0; k < 3; ++k) {
        if (needs_rescaled_sum(plain.sumsq[k], plain.max_abs[k])) partial[c][k] = {scale[k], scaled.sumsq[k]};
      }
    }
    if (may_rescale && P_next) add_into(L, S, P_next, begin, end);
  });
  std::array<ScaledSumsq, 3> total{};
  for (const auto& p : partial) {
    for (int k = 0; k < 3; ++k) total[k] = combine(total[k], p[k]);
  }
  double* out = a.out.mutable_data_ptr<double>();
  if (a.norms) {
    for (int k = 0; k < 3; ++k) out[k] = scaled_norm(total[k]);
  } else {
    out[0] = norm_ratio(total[1], total[0]);
    out[1] = norm_ratio(total[2], total[0]);
  }
}

}  // namespace

void convergence(const ConvergenceArgs& a) {
  AT_DISPATCH_FLOATING_TYPES(a.X.scalar_type(), "rda_ext::convergence", [&] { sums<scalar_t>(a); });
}

}  // namespace rda_ext::cpu
