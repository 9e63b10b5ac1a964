// CUDA kernel of convergence: one pass over X, L, S and LS_prev in tiles; each block writes its
// float64 sums of squares (kept as m^2 * ssq, see group_norm.h: a tile whose plain sum under- or
// overflows is summed again scaled), and a single block combines them in a fixed order
// (reproducible, no atomics). convergence_step writes LS_prev = L + S tile by tile, after the
// tile is summed.

#include "cuda/common.cuh"
#include "group_norm.h"
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

namespace rda_ext::cuda {

namespace {

// Elements a thread takes per tile: a tile of kThreads * kPerThread elements is summed, summed
// again scaled if its float64 sums under- or overflow, then (Update) overwritten in LS_prev, while
// it is still in the L2 cache.
constexpr int kPerThread = 16;
constexpr int64_t kTile = int64_t{kThreads} * kPerThread;

// The three sums of squares (x, x - l - s, p - l - s) of one tile, each value divided by scale[k]
// with Scaled, and (Scaled false) their largest magnitudes; reduced over the block.
template <bool Scaled, typename T>
__device__ void tile_sums(int64_t begin, int64_t n, const T* X, const T* L, const T* S, const T* P,
                          const double* scale, double* sumsq, double* max_abs) {
  double q[3] = {0, 0, 0}, m[3] = {0, 0, 0};
#pragma unroll 4
  for (int j = 0; j < kPerThread; ++j) {
    const int64_t i = begin + int64_t{j} * kThreads + threadIdx.x;
    if (i >= n) break;
    const double x = static_cast<double>(X[i]), l = static_cast<double>(L[i]);
    const double s = static_cast<double>(S[i]), p = static_cast<double>(P[i]);
    double v[3] = {x, x - l - s, p - l - s};
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      if constexpr (Scaled) v[k] /= scale[k];
      else m[k] = fmax(m[k], fabs(v[k]));
      q[k] += v[k] * v[k];
    }
  }
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    sumsq[k] = block_sum(q[k]);
    if constexpr (!Scaled) max_abs[k] = block_reduce(m[k], Max{});
  }
}

// Each block takes every gridDim.x-th tile and writes, per sum, its ScaledSumsq (m, ssq) to partial.
template <typename T, bool Update>
__global__ void sums_kernel(int64_t n, const T* X, const T* L, const T* S, T* P, double* partial) {
  ScaledSumsq total[3];
  for (int64_t begin = int64_t{blockIdx.x} * kTile; begin < n; begin += int64_t{gridDim.x} * kTile) {
    double sumsq[3], max_abs[3];
    tile_sums<false>(begin, n, X, L, S, P, nullptr, sumsq, max_abs);
    ScaledSumsq tile[3];
    bool rescale = false;
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      tile[k] = plain_sumsq(sumsq[k]);
      rescale |= needs_rescaled_sum(sumsq[k], max_abs[k]);
    }
    if (rescale) {  // the same on every thread of the block: the values are block reductions
      double scale[3], scaled[3];
#pragma unroll
      for (int k = 0; k < 3; ++k) scale[k] = max_abs[k] > 0 && max_abs[k] < INFINITY ? max_abs[k] : 1.0;
      tile_sums<true>(begin, n, X, L, S, P, scale, scaled, nullptr);
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        if (needs_rescaled_sum(sumsq[k], max_abs[k])) tile[k] = {scale[k], scaled[k]};
      }
    }
    if constexpr (Update) {
      // Each thread overwrites only the elements it has read itself.
      for (int j = 0; j < kPerThread; ++j) {
        const int64_t i = begin + int64_t{j} * kThreads + threadIdx.x;
        if (i >= n) break;
        P[i] = static_cast<T>(static_cast<opmath_t<T>>(L[i]) + static_cast<opmath_t<T>>(S[i]));
      }
    }
#pragma unroll
    for (int k = 0; k < 3; ++k) total[k] = combine(total[k], tile[k]);
  }
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      partial[6 * int64_t{blockIdx.x} + 2 * k] = total[k].m;
      partial[6 * int64_t{blockIdx.x} + 2 * k + 1] = total[k].ssq;
    }
  }
}

// One block: thread t combines every kThreads-th block's sums, thread 0 then the threads' in order.
__global__ void finish_kernel(int64_t blocks, const double* partial, bool norms, double* out) {
  __shared__ double per_thread[kThreads][6];  // (m, ssq) of each sum
  ScaledSumsq total[3];
  for (int64_t b = threadIdx.x; b < blocks; b += kThreads) {
#pragma unroll
    for (int k = 0; k < 3; ++k) total[k] = combine(total[k], {partial[6 * b + 2 * k], partial[6 * b + 2 * k + 1]});
  }
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    per_thread[threadIdx.x][2 * k] = total[k].m;
    per_thread[threadIdx.x][2 * k + 1] = total[k].ssq;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int t = 1; t < kThreads; ++t) {
#pragma unroll
    for (int k = 0; k < 3; ++k) total[k] = combine(total[k], {per_thread[t][2 * k], per_thread[t][2 * k + 1]});
  }
  if (norms) {
#pragma unroll
    for (int k = 0; k < 3; ++k) out[k] = scaled_norm(total[k]);
  } else {
    out[0] = norm_ratio(total[1], total[0]);
    out[1] = norm_ratio(total[2], total[0]);
  }
}

}  // namespace

void convergence(const ConvergenceArgs& a) {
  const c10::cuda::CUDAGuard guard(a.X.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = a.X.numel();
  const unsigned blocks = grid_for(ceil_div(n, kPerThread));
  const at::Tensor partial = at::empty({6 * int64_t{blocks}}, a.out.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.X.scalar_type(), "rda_ext::convergence", [&] {
    const scalar_t *X = a.X.const_data_ptr<scalar_t>(), *L = a.L.const_data_ptr<scalar_t>();
    const scalar_t* S = a.S.const_data_ptr<scalar_t>();
    // The data pointer of P is written only with update set.
    scalar_t* P = const_cast<scalar_t*>(a.P.const_data_ptr<scalar_t>());
    double* sums = partial.mutable_data_ptr<double>();
    if (a.update) sums_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(n, X, L, S, P, sums);
    else sums_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(n, X, L, S, P, sums);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finish_kernel<<<1, kThreads, 0, stream>>>(blocks, partial.const_data_ptr<double>(), a.norms,
                                            a.out.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace rda_ext::cuda
