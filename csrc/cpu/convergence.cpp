// CPU kernel of convergence: one pass over X, L, S and LS_prev summing ||X||^2, ||X - L - S||^2
// and ||LS_prev - L - S||^2 in float64, in fixed chunks so the result is reproducible; for
// convergence_step the same pass writes LS_prev = L + S.

#include "cpu/parallel.h"
#include "kernels.h"

#include <ATen/Dispatch.h>

#include <array>
#include <cmath>

namespace rda_ext::cpu {

namespace {

// ||X||^2, ||X - L - S||^2 and ||P - L - S||^2 over [begin, end).
// With Update, also P_next[i] = L[i] + S[i] (P_next is P: each P[i] is read first).
template <bool Update, typename T>
RDA_EXT_HOT_LOOP std::array<double, 3> chunk_sums(const T* X, const T* L, const T* S, const T* P, T* P_next,
                                                   int64_t begin, int64_t end) {
  double xx = 0, r1 = 0, r2 = 0;
#pragma omp simd reduction(+ : xx, r1, r2)
  for (int64_t i = begin; i < end; ++i) {
    const double x = X[i], l = L[i], s = S[i], p = P[i];
    const double d1 = x - l - s, d2 = p - l - s;
    xx += x * x;
    r1 += d1 * d1;
    r2 += d2 * d2;
    if constexpr (Update) P_next[i] = L[i] + S[i];
  }
  return {xx, r1, r2};
}

template <typename T>
void sums(const ConvergenceArgs& a) {
  const T* X = a.X.const_data_ptr<T>();
  const T* L = a.L.const_data_ptr<T>();
  const T* S = a.S.const_data_ptr<T>();
  const T* P = a.P.const_data_ptr<T>();
  T* P_next = a.update ? a.P.mutable_data_ptr<T>() : nullptr;
  const int64_t n = a.X.numel();
  std::vector<std::array<double, 3>> partial(ceil_div(n, kChunk));
  for_each_chunk(n, [&](int64_t c, int64_t begin, int64_t end) {
    partial[c] = P_next ? chunk_sums<true>(X, L, S, P, P_next, begin, end)
                        : chunk_sums<false>(X, L, S, P, P_next, begin, end);
  });
  std::array<double, 3> total{0, 0, 0};
  for (const auto& p : partial) {
    for (int k = 0; k < 3; ++k) total[k] += p[k];
  }
  const double scale = total[0] > 0 ? std::sqrt(total[0]) : 1.0;
  double* out = a.out.mutable_data_ptr<double>();
  out[0] = std::sqrt(total[1]) / scale;
  out[1] = std::sqrt(total[2]) / scale;
}

}  // namespace

void convergence(const ConvergenceArgs& a) {
  AT_DISPATCH_FLOATING_TYPES(a.X.scalar_type(), "rda_ext::convergence", [&] { sums<scalar_t>(a); });
}

}  // namespace rda_ext::cpu
