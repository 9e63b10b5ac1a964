// group_norms(x, dim): the l2 norm of each group of a 2-D x, as x.norm(dim=dim) (dim = 1: one
// per row, the outlier score of an instance; dim = 0: one per column).
// Kernels: cpu/group_shrink.cpp, cuda/group_shrink.cu (the norms are their first half).

#include "kernels.h"
#include "ops/common.h"
#include "ops/ops.h"

#include <ATen/ops/empty.h>

namespace rda_ext {

at::Tensor group_norms(const at::Tensor& x, int64_t dim) {
  check_floating(x, "x");
  check_matrix(x, "x");
  const int64_t d = check_group_dim(dim);
  at::Tensor norms = at::empty({x.size(1 - d)}, x.options());
  if (x.numel() == 0) return norms.zero_();
  const bool transposed = stored_transposed(x);
  GroupNormsArgs a{group_args(as_matrix(x, transposed), Matrix{}, transposed, d)};
  a.norms = norms;
  kernels_for(x).group_norms(a);
  return norms;
}

}  // namespace rda_ext
