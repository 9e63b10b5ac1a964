// group_norms(x, dim, minus=None): the l2 norm of each group of a 2-D x - minus, as
// (x - minus).norm(dim=dim) (dim = 1: one per row, the outlier score of an instance; dim = 0: one
// per column) without materialising x - minus: the residual norms of RDA in one read of X and L.
// Kernels: cpu/group_shrink.cpp, cuda/group_shrink.cu (the norms are their first half).

#include "kernels.h"
#include "ops/common.h"
#include "ops/ops.h"

#include <ATen/ops/empty.h>

namespace rda_ext {

at::Tensor group_norms(const at::Tensor& x, int64_t dim, const std::optional<at::Tensor>& minus) {
  check_floating(x, "x");
  check_matrix(x, "x");
  if (minus.has_value()) check_like(*minus, "minus", x, "x");
  const int64_t d = check_group_dim(dim);
  at::Tensor norms = at::empty({x.size(1 - d)}, x.options());
  if (x.numel() == 0) return norms.zero_();
  const bool transposed = stored_transposed(x);
  const Matrix y = minus.has_value() ? as_matrix(*minus, transposed) : Matrix{};
  GroupNormsArgs a{group_args(as_matrix(x, transposed), y, transposed, d)};
  a.norms = norms;
  kernels_for(x).group_norms(a);
  return norms;
}

}  // namespace rda_ext
