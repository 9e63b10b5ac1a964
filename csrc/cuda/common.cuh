#pragma once
// Shared by the CUDA kernels: the arithmetic type of each dtype, launch geometry, reductions.

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace rda_ext::cuda {

// Arithmetic type: float for float16/bfloat16/float32, double for float64.
template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int kThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int sm_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// Blocks for a grid-stride loop over `work` items of kThreads each: enough to fill the device.
inline unsigned grid_for(int64_t work) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work, kThreads), 8 * int64_t{sm_count()})));
}

// r = x - y (HasY) or x, in the arithmetic type.
template <bool HasY, typename T>
__device__ __forceinline__ opmath_t<T> residual(const T* x, const T* y, int64_t i) {
  using A = opmath_t<T>;
  if constexpr (HasY) return static_cast<A>(x[i]) - static_cast<A>(y[i]);
  else return static_cast<A>(x[i]);
}

struct Sum {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct Max {
  __device__ double operator()(double a, double b) const { return fmax(a, b); }
};

template <typename Op>
__device__ __forceinline__ double warp_reduce(double v, Op op) {
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, s));
  return v;
}

// v reduced over a block of exactly kThreads threads, returned to every thread. Every thread of
// the block must call it.
template <typename Op>
__device__ __forceinline__ double block_reduce(double v, Op op) {
  __shared__ double warp_results[kThreads / 32];
  v = warp_reduce(v, op);
  if (threadIdx.x % 32 == 0) warp_results[threadIdx.x / 32] = v;
  __syncthreads();
  double total = warp_results[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) total = op(total, warp_results[w]);
  __syncthreads();  // warp_results is written again by the next call
  return total;
}

__device__ __forceinline__ double block_sum(double v) { return block_reduce(v, Sum{}); }

}  // namespace rda_ext::cuda
