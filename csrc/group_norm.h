#pragma once
// The l2 norm of a group from its float64 sum of squares, safe where that sum under- or
// overflows (float64 entries below ~1e-146 or above ~1e150 in magnitude): those rare groups
// are summed again scaled by their largest magnitude, as a careful norm does. The same for the
// sums of squares of the convergence numbers, chunk by chunk.

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace rda_ext {

// Below this a sum of squares may have lost digits to subnormal squares (or be all zeros).
constexpr double kSafeSumsqMin = 0x1p-970;

C10_HOST_DEVICE inline bool needs_rescaled_norm(double sumsq) {
  return sumsq < kSafeSumsqMin || sumsq == INFINITY;
}

// norm = m * sqrt(sum((r_k / m)^2)) with m = max |r_k|, over count values fetched by r(k).
template <typename Fetch>
C10_HOST_DEVICE double rescaled_norm(int64_t count, Fetch r) {
  double m = 0;
  for (int64_t k = 0; k < count; ++k) m = fmax(m, fabs(r(k)));
  if (m == 0 || m == INFINITY) return m;
  double s = 0;
  for (int64_t k = 0; k < count; ++k) {
    const double q = r(k) / m;
    s += q * q;
  }
  return m * sqrt(s);
}

// A sum of squares kept as m^2 * ssq so that it neither under- nor overflows in float64: a chunk's
// finite plain sum s as (sqrt(s), 1), a rescaled chunk as (its largest magnitude, the sum of the
// squared values divided by it), zero as (0, 0). Combined, ssq grows at most by the number of
// chunks, so the convergence numbers add such sums over up to billions of entries.
struct ScaledSumsq {
  double m = 0, ssq = 0;
};

// A chunk's plain sum of squares, whose largest magnitude is max_abs, needs summing again scaled:
// it overflowed although every value is finite, or it lost digits to underflow. NaN needs nothing.
C10_HOST_DEVICE inline bool needs_rescaled_sum(double sumsq, double max_abs) {
  return (sumsq == INFINITY && max_abs < INFINITY) || (sumsq < kSafeSumsqMin && max_abs > 0);
}

// A plain sum as a ScaledSumsq; NaN and inf stay what they are.
C10_HOST_DEVICE inline ScaledSumsq plain_sumsq(double sumsq) {
  if (sumsq == 0) return {};
  if (sumsq < INFINITY) return {sqrt(sumsq), 1};
  return {1, sumsq};
}

C10_HOST_DEVICE inline ScaledSumsq combine(ScaledSumsq a, ScaledSumsq b) {
  if (a.m < b.m) {
    const ScaledSumsq t = a;
    a = b;
    b = t;
  }
  if (b.m == 0) return a;
  const double r = b.m / a.m;
  return {a.m, a.ssq + b.ssq * r * r};
}

C10_HOST_DEVICE inline double scaled_norm(ScaledSumsq a) { return a.m * sqrt(a.ssq); }

// ||a|| / ||b|| from their sums of squares; where ||b|| = 0, ||a||.
C10_HOST_DEVICE inline double norm_ratio(ScaledSumsq a, ScaledSumsq b) {
  if (b.m == 0) return scaled_norm(a);
  return (a.m / b.m) * sqrt(a.ssq / b.ssq);
}

// The shrink factor of a group with the given norm; NaN norms stay NaN so that bad data shows.
C10_HOST_DEVICE inline double shrink_factor(double norm, double lam) {
  return norm <= lam ? 0.0 : 1.0 - lam / norm;
}

}  // namespace rda_ext
