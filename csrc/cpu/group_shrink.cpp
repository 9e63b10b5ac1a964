// CPU kernels of group_shrink, group_norms and shrink_residual "l21_*". Groups along the
// contiguous dimension (rows of a row-major matrix) are done in one pass per row while the row
// is in cache; groups across it (columns) in two passes: column sums of squares, then scaling
// (one pass when the caller gives the norms).
// Squares are summed in float64 whatever the dtype.

#include "cpu/parallel.h"
#include "group_norm.h"
#include "kernels.h"

#include <ATen/Dispatch.h>

#include <cmath>

namespace rda_ext::cpu {

namespace {

// Operand rows of r = x - y (y null: r = x).
template <typename T>
struct Rows {
  const T* x;
  const T* y;
  int64_t x_ld, y_ld;

  explicit Rows(const GroupArgs& a)
      : x(a.x.const_data_ptr<T>()),
        y(a.y.defined() ? a.y.const_data_ptr<T>() : nullptr),
        x_ld(a.x_ld),
        y_ld(a.y_ld) {}
  const T* x_row(int64_t o) const { return x + o * x_ld; }
  const T* y_row(int64_t o) const { return y ? y + o * y_ld : nullptr; }
};

template <typename T>
RDA_EXT_HOT_LOOP double sumsq(const T* x, const T* y, int64_t n) {
  double acc = 0;
  if (y) {
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) {
      const double r = x[j] - y[j];
      acc += r * r;
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) {
      const double r = x[j];
      acc += r * r;
    }
  }
  return acc;
}

// out[j] = r[j] * scale(j) for j in [j0, j1) of one row.
template <typename T, typename Scale>
RDA_EXT_HOT_LOOP void write_scaled(const T* x, const T* y, T* out, int64_t j0, int64_t j1, Scale scale) {
  if (y) {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) out[j] = (x[j] - y[j]) * scale(j);
  } else {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) out[j] = x[j] * scale(j);
  }
}

template <typename T>
double row_norm(const T* x, const T* y, int64_t n) {
  const double s = sumsq(x, y, n);
  if (!needs_rescaled_norm(s)) return std::sqrt(s);
  return rescaled_norm(n, [&](int64_t j) { return y ? double(x[j] - y[j]) : double(x[j]); });
}

int64_t rows_per_task(int64_t inner) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)); }

// acc[j] += r[j]^2 over one row.
template <typename T>
RDA_EXT_HOT_LOOP void add_squares(double* acc, const T* x, const T* y, int64_t n) {
  if (y) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const double r = x[j] - y[j];
      acc[j] += r * r;
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) acc[j] += double(x[j]) * double(x[j]);
  }
}

// The norm of every column of r over all outer rows.
template <typename T>
std::vector<double> column_norms(const GroupArgs& a, const Rows<T>& rows) {
  const int64_t outer = a.outer, inner = a.inner;
  // Row chunks of at least kChunk elements; at most 64 of them and 32 MB of partial sums.
  const int64_t max_chunks = std::clamp<int64_t>((int64_t{1} << 22) / inner, 1, 64);
  const int64_t chunks = std::clamp<int64_t>(outer * inner / kChunk, 1, std::min(outer, max_chunks));
  std::vector<double> partial(chunks * inner, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double* acc = partial.data() + c * inner;
      for (int64_t o = c * outer / chunks; o < (c + 1) * outer / chunks; ++o) {
        add_squares(acc, rows.x_row(o), rows.y_row(o), inner);
      }
    }
  });
  for (int64_t c = 1; c < chunks; ++c) {
    for (int64_t j = 0; j < inner; ++j) partial[j] += partial[c * inner + j];
  }
  partial.resize(inner);
  for (int64_t j = 0; j < inner; ++j) {
    if (!needs_rescaled_norm(partial[j])) {
      partial[j] = std::sqrt(partial[j]);
      continue;
    }
    partial[j] = rescaled_norm(outer, [&](int64_t o) {
      const T* y = rows.y_row(o);
      return y ? double(rows.x_row(o)[j] - y[j]) : double(rows.x_row(o)[j]);
    });
  }
  return partial;
}

template <typename T>
void shrink(const GroupShrinkArgs& a) {
  const Rows<T> rows(a);
  T* out = a.out.mutable_data_ptr<T>();
  const T* given = a.given_norms.defined() ? a.given_norms.const_data_ptr<T>() : nullptr;
  if (a.inner_groups) {
    at::parallel_for(0, a.outer, rows_per_task(a.inner), [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        const T* x = rows.x_row(o);
        const T* y = rows.y_row(o);
        const double norm = given ? double(given[o]) : row_norm(x, y, a.inner);
        const T f = static_cast<T>(shrink_factor(norm, a.lam));
        write_scaled(x, y, out + o * a.out_ld, 0, a.inner, [f](int64_t) { return f; });
      }
    });
    return;
  }
  const std::vector<double> norms = given ? std::vector<double>(given, given + a.inner) : column_norms(a, rows);
  std::vector<T> factor(a.inner);
  for (int64_t j = 0; j < a.inner; ++j) factor[j] = static_cast<T>(shrink_factor(norms[j], a.lam));
  const T* f = factor.data();
  for_each_row_segment(a.outer, a.inner, [&](int64_t o, int64_t j0, int64_t j1) {
    write_scaled(rows.x_row(o), rows.y_row(o), out + o * a.out_ld, j0, j1, [f](int64_t j) { return f[j]; });
  });
}

template <typename T>
void norms(const GroupNormsArgs& a) {
  const Rows<T> rows(a);
  T* norms = a.norms.mutable_data_ptr<T>();
  if (a.inner_groups) {
    at::parallel_for(0, a.outer, rows_per_task(a.inner), [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) norms[o] = static_cast<T>(row_norm(rows.x_row(o), rows.y_row(o), a.inner));
    });
    return;
  }
  const std::vector<double> column = column_norms(a, rows);
  for (int64_t j = 0; j < a.inner; ++j) norms[j] = static_cast<T>(column[j]);
}

}  // namespace

void group_shrink(const GroupShrinkArgs& a) {
  AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "rda_ext::group_shrink", [&] { shrink<scalar_t>(a); });
}

void group_norms(const GroupNormsArgs& a) {
  AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "rda_ext::group_norms", [&] { norms<scalar_t>(a); });
}

}  // namespace rda_ext::cpu
