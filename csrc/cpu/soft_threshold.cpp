// CPU kernel of soft_threshold and of shrink_residual "l1": out = r - clamp(r, -lam, lam) with
// r = x - y, which equals sign(r) * max(|r| - lam, 0) exactly and vectorises.

#include "cpu/parallel.h"
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

namespace rda_ext::cpu {

namespace {

// min/max rather than std::clamp: they compile to min/max instructions, not branches that
// mispredict on data near the threshold. A NaN r passes through both and stays NaN.
template <typename T>
RDA_EXT_HOT_LOOP void soft_range(const T* x, const T* y, T* out, int64_t begin, int64_t end, T lam) {
  if (y) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const T r = x[i] - y[i];
      out[i] = r - std::min(std::max(r, -lam), lam);
    }
  } else {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const T r = x[i];  // a local, not a reference into x, lets the loop vectorise
      out[i] = r - std::min(std::max(r, -lam), lam);
    }
  }
}

// lam in T, at most T's largest finite value: a finite lam beyond it would round to inf, and
// inf - clamp(inf, -inf, inf) is NaN where the prox of an infinite entry is that entry.
template <typename T>
T threshold_as(double lam) {
  return static_cast<T>(std::min(lam, static_cast<double>(std::numeric_limits<T>::max())));
}

template <typename T>
void soft(const T* x, const T* y, T* out, int64_t n, T lam) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { soft_range(x, y, out, begin, end, lam); });
}

}  // namespace

void soft_threshold(const SoftThresholdArgs& a) {
  AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "rda_ext::soft_threshold", [&] {
    soft<scalar_t>(a.x.const_data_ptr<scalar_t>(), a.y.defined() ? a.y.const_data_ptr<scalar_t>() : nullptr,
                   a.out.mutable_data_ptr<scalar_t>(), a.x.numel(), threshold_as<scalar_t>(a.lam));
  });
}

}  // namespace rda_ext::cpu
