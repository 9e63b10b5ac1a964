// convergence(X, L, S, LS_prev): the stopping numbers of RDA, c1 = ||X - L - S||_F / ||X||_F and
// c2 = ||LS_prev - L - S||_F / ||X||_F, in one pass over the four operands, summed in float64.
// Where ||X||_F = 0 both are the plain norms. Returns a float64 tensor [c1, c2] on X's device.
// Kernels: cpu/convergence.cpp, cuda/convergence.cu.

#include "kernels.h"
#include "ops/common.h"
#include "ops/ops.h"

#include <ATen/ops/empty.h>

namespace rda_ext {

at::Tensor convergence(const at::Tensor& X, const at::Tensor& L, const at::Tensor& S, const at::Tensor& LS_prev) {
  check_floating(X, "X");
  check_like(L, "L", X, "X");
  check_like(S, "S", X, "X");
  check_like(LS_prev, "LS_prev", X, "X");
  at::Tensor out = at::empty({2}, X.options().dtype(at::kDouble));
  if (X.numel() == 0) return out.zero_();
  const at::Tensor Xd = dense(X);
  kernels_for(Xd).convergence({Xd, in_layout_of(L, Xd), in_layout_of(S, Xd), in_layout_of(LS_prev, Xd), out});
  return out;
}

}  // namespace rda_ext
