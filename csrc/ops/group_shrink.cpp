// group_shrink(x, lam, dim): the proximal operator of lam * ||.||_{2,1} for a 2-D x, the groups
// being the slices that x.norm(dim=dim) reduces (dim = 1: rows, dim = 0: columns).
// Kernels: cpu/group_shrink.cpp, cuda/group_shrink.cu.

#include "kernels.h"
#include "ops/common.h"
#include "ops/ops.h"

#include <ATen/ops/empty_like.h>

namespace rda_ext {

void group_shrink_into(const at::Tensor& x, const at::Tensor& y, double lam, int64_t dim, const at::Tensor& out,
                       const at::Tensor& norms) {
  // Column-major input (e.g. X.T) is read in place rather than copied.
  const bool transposed = stored_transposed(x);
  const Matrix xm = as_matrix(x, transposed);
  const Matrix ym = y.defined() ? as_matrix(y, transposed) : Matrix{};
  const Matrix target = out_matrix(out, transposed);
  if (x.numel() > 0) {
    GroupShrinkArgs a{group_args(xm, ym, transposed, dim)};
    a.out = target.t;
    a.out_ld = target.ld;
    a.lam = lam;
    a.given_norms = norms;
    kernels_for(x).group_shrink(a);
  }
  finish_out(out, target.t);
}

namespace {
int64_t check_args(const at::Tensor& x, double lam, int64_t dim) {
  check_floating(x, "x");
  check_matrix(x, "x");
  check_lam(lam);
  return check_group_dim(dim);
}
}  // namespace

at::Tensor group_shrink(const at::Tensor& x, double lam, int64_t dim) {
  const int64_t d = check_args(x, lam, dim);
  at::Tensor out = at::empty_like(x);
  group_shrink_into(x, {}, lam, d, out);
  return out;
}

void group_shrink_out(const at::Tensor& x, double lam, int64_t dim, const at::Tensor& out) {
  check_no_autograd("group_shrink_out", {x, out});
  const int64_t d = check_args(x, lam, dim);
  check_out(out, x, {x});
  group_shrink_into(x, {}, lam, d, out);
}

}  // namespace rda_ext
