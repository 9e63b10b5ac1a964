#pragma once
// The l2 norm of a group from its float64 sum of squares, safe where that sum under- or
// overflows (float64 entries below ~1e-146 or above ~1e150 in magnitude): those rare groups
// are summed again scaled by their largest magnitude, as a careful norm does.

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

// The shrink factor of a group with the given norm; NaN norms stay NaN so that bad data shows.
C10_HOST_DEVICE inline double shrink_factor(double norm, double lam) {
  return norm <= lam ? 0.0 : 1.0 - lam / norm;
}

}  // namespace rda_ext
