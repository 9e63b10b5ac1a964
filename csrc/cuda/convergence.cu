// CUDA kernel of convergence: one grid-stride pass over X, L, S and LS_prev; each block writes
// its float64 sums, and a single block adds them in a fixed order (reproducible, no atomics).
// convergence_step writes LS_prev = L + S in the same pass.

#include "cuda/common.cuh"
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

namespace rda_ext::cuda {

namespace {

// Update: P[i] = L[i] + S[i] once P[i] has been read (convergence_step).
template <typename T, bool Update>
__global__ void sums_kernel(int64_t n, const T* X, const T* L, const T* S, T* P, double* partial) {
  double xx = 0, r1 = 0, r2 = 0;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const T li = L[i], si = S[i];
    const double x = static_cast<double>(X[i]), l = static_cast<double>(li);
    const double s = static_cast<double>(si), p = static_cast<double>(P[i]);
    const double d1 = x - l - s, d2 = p - l - s;
    xx += x * x;
    r1 += d1 * d1;
    r2 += d2 * d2;
    if constexpr (Update) P[i] = static_cast<T>(static_cast<opmath_t<T>>(li) + static_cast<opmath_t<T>>(si));
  }
  xx = block_sum(xx);
  r1 = block_sum(r1);
  r2 = block_sum(r2);
  if (threadIdx.x == 0) {
    partial[3 * blockIdx.x] = xx;
    partial[3 * blockIdx.x + 1] = r1;
    partial[3 * blockIdx.x + 2] = r2;
  }
}

// One block: thread k adds every kThreads-th block's sums, then the block adds the threads'.
__global__ void finish_kernel(int64_t blocks, const double* partial, double* out) {
  double xx = 0, r1 = 0, r2 = 0;
  for (int64_t b = threadIdx.x; b < blocks; b += kThreads) {
    xx += partial[3 * b];
    r1 += partial[3 * b + 1];
    r2 += partial[3 * b + 2];
  }
  xx = block_sum(xx);
  r1 = block_sum(r1);
  r2 = block_sum(r2);
  if (threadIdx.x == 0) {
    const double scale = xx > 0 ? sqrt(xx) : 1.0;
    out[0] = sqrt(r1) / scale;
    out[1] = sqrt(r2) / scale;
  }
}

}  // namespace

void convergence(const ConvergenceArgs& a) {
  const c10::cuda::CUDAGuard guard(a.X.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = a.X.numel();
  const unsigned blocks = grid_for(n);
  const at::Tensor partial = at::empty({3 * int64_t{blocks}}, a.out.options());
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
  finish_kernel<<<1, kThreads, 0, stream>>>(blocks, partial.const_data_ptr<double>(), a.out.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace rda_ext::cuda
