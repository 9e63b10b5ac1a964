// CPU kernel of soft_threshold and of shrink_residual "l1": out = r - clamp(r, -lam, lam) with
// r = x - y, which equals sign(r) * max(|r| - lam, 0) exactly and has no branch to vectorise.

#include "cpu/parallel.h"
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace rda_ext::cpu {

namespace {

template <typename T>
void soft(const T* x, const T* y, T* out, int64_t n, T lam) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    if (y) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) {
        const T r = x[i] - y[i];
        out[i] = r - std::clamp(r, -lam, lam);
      }
    } else {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) out[i] = x[i] - std::clamp(x[i], -lam, lam);
    }
  });
}

}  // namespace

void soft_threshold(const SoftThresholdArgs& a) {
  AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "rda_ext::soft_threshold", [&] {
    soft<scalar_t>(a.x.const_data_ptr<scalar_t>(), a.y.defined() ? a.y.const_data_ptr<scalar_t>() : nullptr,
                   a.out.mutable_data_ptr<scalar_t>(), a.x.numel(), static_cast<scalar_t>(a.lam));
  });
}

}  // namespace rda_ext::cpu
