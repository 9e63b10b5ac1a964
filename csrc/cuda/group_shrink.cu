// CUDA kernels of group_shrink, group_norms and shrink_residual "l21_*".
// Groups along the contiguous dimension (rows of a row-major matrix): one team of threads per
// row (a warp for short rows, a block for long ones) sums the squares, then rescales the row
// while it is still in cache. Groups across it (columns): a tiled pass writes per-chunk column
// sums, a second pass adds them in a fixed order (so results are reproducible, no atomics), and
// a third rescales. Given the norms (shrink_residual's norms=), only the rescaling runs.
// Squares are summed in float64 whatever the dtype.

#include "cuda/common.cuh"
#include "group_norm.h"
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

namespace rda_ext::cuda {

namespace {

// v reduced over the TEAM threads that share a row (a warp, or the whole block).
template <int TEAM, typename Op>
__device__ __forceinline__ double team_reduce(double v, Op op) {
  if constexpr (TEAM == 32) return warp_reduce(v, op);
  else return block_reduce(v, op);
}

// The norm of a row whose plain sum of squares under- or overflowed (see group_norm.h).
template <int TEAM, bool HasY, typename T>
__device__ double team_rescaled_norm(const T* xr, const T* yr, int64_t inner, int lane) {
  double m = 0;
  for (int64_t j = lane; j < inner; j += TEAM) m = fmax(m, fabs(double(residual<HasY>(xr, yr, j))));
  m = team_reduce<TEAM>(m, Max{});
  if (m == 0 || m == INFINITY) return m;
  double s = 0;
  for (int64_t j = lane; j < inner; j += TEAM) {
    const double q = double(residual<HasY>(xr, yr, j)) / m;
    s += q * q;
  }
  return m * sqrt(team_reduce<TEAM>(s, Sum{}));
}

// Row groups: TEAM threads per row, kThreads / TEAM rows per block at a time. With norms set,
// writes the norms only; else writes out = r * factor.
template <typename T, int TEAM, bool HasY>
__global__ void row_groups_kernel(int64_t outer, int64_t inner, const T* x, int64_t x_ld, const T* y,
                                  int64_t y_ld, T* out, int64_t out_ld, T* norms, const T* given, double lam) {
  using A = opmath_t<T>;
  constexpr int kTeams = kThreads / TEAM;
  const int lane = threadIdx.x % TEAM;
  // A block-wide team has one row per block, so every thread of the block takes the same path.
  for (int64_t o = int64_t{blockIdx.x} * kTeams + threadIdx.x / TEAM; o < outer;
       o += int64_t{gridDim.x} * kTeams) {
    const T* xr = x + o * x_ld;
    const T* yr = HasY ? y + o * y_ld : nullptr;
    double norm;
    if (given) {
      norm = static_cast<double>(given[o]);
    } else {
      double acc = 0;
#pragma unroll 4
      for (int64_t j = lane; j < inner; j += TEAM) {
        const double r = residual<HasY>(xr, yr, j);
        acc += r * r;
      }
      const double sumsq = team_reduce<TEAM>(acc, Sum{});
      norm = needs_rescaled_norm(sumsq) ? team_rescaled_norm<TEAM, HasY>(xr, yr, inner, lane) : sqrt(sumsq);
    }
    if (norms) {
      if (lane == 0) norms[o] = static_cast<T>(norm);
      continue;
    }
    const A f = static_cast<A>(shrink_factor(norm, lam));
    T* outr = out + o * out_ld;
#pragma unroll 4
    for (int64_t j = lane; j < inner; j += TEAM) outr[j] = static_cast<T>(residual<HasY>(xr, yr, j) * f);
  }
}

// Column groups use 32 x 8 tiles: a warp reads 32 neighbouring columns of one row (coalesced),
// the 8 warps of a block take every 8th row of the block's chunk of rows.
constexpr int kTileCols = 32, kTileRows = kThreads / kTileCols;

struct Chunks {
  int64_t count, rows;
};

// Enough (column tile, row chunk) blocks to fill the device, the partial sums kept small.
Chunks column_chunks(int64_t outer, int64_t inner) {
  const int64_t tiles = ceil_div(inner, kTileCols);
  const int64_t count = std::clamp<int64_t>(ceil_div(16 * int64_t{sm_count()}, tiles), 1, std::min<int64_t>(outer, 1024));
  return {ceil_div(outer, ceil_div(outer, count)), ceil_div(outer, count)};
}

template <typename T, bool HasY>
__global__ void column_sumsq_kernel(int64_t outer, int64_t inner, const T* x, int64_t x_ld, const T* y,
                                    int64_t y_ld, int64_t chunk_rows, double* partial) {
  __shared__ double tile[kTileRows][kTileCols + 1];
  const int64_t j = int64_t{blockIdx.x} * kTileCols + threadIdx.x % kTileCols;
  const int row = threadIdx.x / kTileCols;
  const int64_t o_end = std::min(outer, (int64_t{blockIdx.y} + 1) * chunk_rows);
  double acc = 0;
  if (j < inner) {
#pragma unroll 4
    for (int64_t o = int64_t{blockIdx.y} * chunk_rows + row; o < o_end; o += kTileRows) {
      const double r = HasY ? static_cast<double>(static_cast<opmath_t<T>>(x[o * x_ld + j]) -
                                                  static_cast<opmath_t<T>>(y[o * y_ld + j]))
                            : static_cast<double>(x[o * x_ld + j]);
      acc += r * r;
    }
  }
  tile[row][threadIdx.x % kTileCols] = acc;
  __syncthreads();
  if (row == 0 && j < inner) {
    double total = 0;
#pragma unroll
    for (int k = 0; k < kTileRows; ++k) total += tile[k][threadIdx.x];
    partial[int64_t{blockIdx.y} * inner + j] = total;
  }
}

// Adds the chunks' sums of each column in chunk order; writes the norm (norms set) or the
// shrink factor.
template <typename T, bool HasY>
__global__ void column_finish_kernel(int64_t outer, int64_t inner, const T* x, int64_t x_ld, const T* y,
                                     int64_t y_ld, int64_t chunks, const double* partial, double lam,
                                     T* norms, double* factor) {
  for (int64_t j = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; j < inner; j += int64_t{gridDim.x} * blockDim.x) {
    double total = 0;
    for (int64_t c = 0; c < chunks; ++c) total += partial[c * inner + j];
    const double norm = !needs_rescaled_norm(total) ? sqrt(total) : rescaled_norm(outer, [&](int64_t o) {
      return double(residual<HasY>(x + o * x_ld + j, HasY ? y + o * y_ld + j : nullptr, 0));
    });
    if (norms) norms[j] = static_cast<T>(norm);
    else factor[j] = shrink_factor(norm, lam);
  }
}

template <typename T>
__global__ void given_factor_kernel(int64_t inner, const T* given, double lam, double* factor) {
  for (int64_t j = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; j < inner; j += int64_t{gridDim.x} * blockDim.x) {
    factor[j] = shrink_factor(static_cast<double>(given[j]), lam);
  }
}

template <typename T, bool HasY>
__global__ void column_scale_kernel(int64_t outer, int64_t inner, const T* x, int64_t x_ld, const T* y,
                                    int64_t y_ld, T* out, int64_t out_ld, int64_t chunk_rows,
                                    const double* factor) {
  using A = opmath_t<T>;
  const int64_t j = int64_t{blockIdx.x} * kTileCols + threadIdx.x % kTileCols;
  if (j >= inner) return;
  const A f = static_cast<A>(factor[j]);
  const int64_t o_end = std::min(outer, (int64_t{blockIdx.y} + 1) * chunk_rows);
#pragma unroll 4
  for (int64_t o = int64_t{blockIdx.y} * chunk_rows + threadIdx.x / kTileCols; o < o_end; o += kTileRows) {
    const A r = HasY ? static_cast<A>(x[o * x_ld + j]) - static_cast<A>(y[o * y_ld + j]) : static_cast<A>(x[o * x_ld + j]);
    out[o * out_ld + j] = static_cast<T>(r * f);
  }
}

// Rows of up to this many elements get a warp each; longer ones a block.
constexpr int64_t kWarpRowMax = 2048;

template <typename T, bool HasY>
void launch(const GroupArgs& a, T* out, int64_t out_ld, T* norms, const T* given, double lam) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const T* x = a.x.const_data_ptr<T>();
  const T* y = HasY ? a.y.const_data_ptr<T>() : nullptr;
  if (a.inner_groups) {
    if (a.inner <= kWarpRowMax) {
      row_groups_kernel<T, 32, HasY><<<grid_for(a.outer * 32), kThreads, 0, stream>>>(
          a.outer, a.inner, x, a.x_ld, y, a.y_ld, out, out_ld, norms, given, lam);
    } else {
      row_groups_kernel<T, kThreads, HasY><<<grid_for(a.outer * kThreads), kThreads, 0, stream>>>(
          a.outer, a.inner, x, a.x_ld, y, a.y_ld, out, out_ld, norms, given, lam);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const Chunks chunks = column_chunks(a.outer, a.inner);
  const dim3 tiles(static_cast<unsigned>(ceil_div(a.inner, kTileCols)), static_cast<unsigned>(chunks.count));
  const auto f64 = a.x.options().dtype(at::kDouble);
  if (given) {
    const at::Tensor factor = at::empty({a.inner}, f64);
    given_factor_kernel<T><<<grid_for(a.inner), kThreads, 0, stream>>>(a.inner, given, lam,
                                                                         factor.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    column_scale_kernel<T, HasY><<<tiles, kThreads, 0, stream>>>(a.outer, a.inner, x, a.x_ld, y, a.y_ld, out,
                                                                  out_ld, chunks.rows, factor.const_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const at::Tensor partial = at::empty({chunks.count * a.inner}, f64);
  column_sumsq_kernel<T, HasY><<<tiles, kThreads, 0, stream>>>(a.outer, a.inner, x, a.x_ld, y, a.y_ld,
                                                                chunks.rows, partial.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor factor = norms ? at::Tensor() : at::empty({a.inner}, f64);
  double* factor_ptr = norms ? nullptr : factor.mutable_data_ptr<double>();
  column_finish_kernel<T, HasY><<<grid_for(a.inner), kThreads, 0, stream>>>(
      a.outer, a.inner, x, a.x_ld, y, a.y_ld, chunks.count, partial.const_data_ptr<double>(), lam, norms, factor_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (norms) return;
  column_scale_kernel<T, HasY><<<tiles, kThreads, 0, stream>>>(a.outer, a.inner, x, a.x_ld, y, a.y_ld, out,
                                                                out_ld, chunks.rows, factor_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void dispatch_y(const GroupArgs& a, T* out, int64_t out_ld, T* norms, const T* given, double lam) {
  if (a.y.defined()) launch<T, true>(a, out, out_ld, norms, given, lam);
  else launch<T, false>(a, out, out_ld, norms, given, lam);
}

}  // namespace

void group_shrink(const GroupShrinkArgs& a) {
  const c10::cuda::CUDAGuard guard(a.x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "rda_ext::group_shrink", [&] {
    const scalar_t* given = a.given_norms.defined() ? a.given_norms.const_data_ptr<scalar_t>() : nullptr;
    dispatch_y<scalar_t>(a, a.out.mutable_data_ptr<scalar_t>(), a.out_ld, nullptr, given, a.lam);
  });
}

void group_norms(const GroupNormsArgs& a) {
  const c10::cuda::CUDAGuard guard(a.x.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "rda_ext::group_norms", [&] {
    dispatch_y<scalar_t>(a, nullptr, 0, a.norms.mutable_data_ptr<scalar_t>(), nullptr, 0.0);
  });
}

}  // namespace rda_ext::cuda
