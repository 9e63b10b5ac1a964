// CUDA kernel of soft_threshold and of shrink_residual "l1": out = r - clamp(r, -lam, lam) with
// r = x - y, streaming 16-byte vectors when every operand is 16-byte aligned.

#include "cuda/common.cuh"
#include "kernels.h"

#include <algorithm>
#include <limits>

#include <ATen/Dispatch.h>

namespace rda_ext::cuda {

namespace {

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V, bool HasY>
__global__ void soft_kernel(const T* x, const T* y, T* out, int64_t n, opmath_t<T> lam) {
  using A = opmath_t<T>;
  using P = Pack<T, V>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t packs = n / V;
  for (int64_t p = first; p < packs; p += stride) {
    const P px = reinterpret_cast<const P*>(x)[p];
    P py;
    if constexpr (HasY) py = reinterpret_cast<const P*>(y)[p];
    P po;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A r = HasY ? static_cast<A>(px.v[k]) - static_cast<A>(py.v[k]) : static_cast<A>(px.v[k]);
      po.v[k] = static_cast<T>(r - ::min(::max(r, -lam), lam));
    }
    reinterpret_cast<P*>(out)[p] = po;
  }
  for (int64_t i = packs * V + first; i < n; i += stride) {
    const A r = residual<HasY>(x, y, i);
    out[i] = static_cast<T>(r - ::min(::max(r, -lam), lam));
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, bool HasY>
void launch(const T* x, const T* y, T* out, int64_t n, double lam) {
  constexpr int V = 16 / sizeof(T);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  // At most the arithmetic type's largest finite value: a finite lam beyond it would round to
  // inf, and inf - clamp(inf, -inf, inf) is NaN where the prox of an infinite entry is that entry.
  const auto l = static_cast<opmath_t<T>>(std::min(lam, static_cast<double>(std::numeric_limits<opmath_t<T>>::max())));
  if (aligned16(x) && aligned16(out) && (!HasY || aligned16(y))) {
    soft_kernel<T, V, HasY><<<grid_for(n / V + 1), kThreads, 0, stream>>>(x, y, out, n, l);
  } else {
    soft_kernel<T, 1, HasY><<<grid_for(n), kThreads, 0, stream>>>(x, y, out, n, l);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void soft_threshold(const SoftThresholdArgs& a) {
  const c10::cuda::CUDAGuard guard(a.x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "rda_ext::soft_threshold", [&] {
    const scalar_t* x = a.x.const_data_ptr<scalar_t>();
    scalar_t* out = a.out.mutable_data_ptr<scalar_t>();
    if (a.y.defined()) launch<scalar_t, true>(x, a.y.const_data_ptr<scalar_t>(), out, a.x.numel(), a.lam);
    else launch<scalar_t, false>(x, nullptr, out, a.x.numel(), a.lam);
  });
}

}  // namespace rda_ext::cuda
