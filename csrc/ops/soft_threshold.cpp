// soft_threshold(x, lam): the proximal operator of lam * ||.||_1, element-wise, any shape.
// Kernels: cpu/soft_threshold.cpp, cuda/soft_threshold.cu.

#include "kernels.h"
#include "ops/common.h"
#include "ops/ops.h"

#include <ATen/ops/empty_like.h>

namespace rda_ext {

void soft_threshold_into(const at::Tensor& x, const at::Tensor& y, double lam, const at::Tensor& out) {
  const at::Tensor xd = dense(x);
  const at::Tensor yd = y.defined() ? in_layout_of(y, xd) : y;
  const at::Tensor target = out_like(out, xd);
  if (xd.numel() > 0) kernels_for(xd).soft_threshold({xd, yd, target, lam});
  finish_out(out, target);
}

namespace {
void check_args(const at::Tensor& x, double lam) {
  check_floating(x, "x");
  check_lam(lam);
}
}  // namespace

at::Tensor soft_threshold(const at::Tensor& x, double lam) {
  check_args(x, lam);
  at::Tensor out = at::empty_like(x);
  soft_threshold_into(x, {}, lam, out);
  return out;
}

void soft_threshold_out(const at::Tensor& x, double lam, const at::Tensor& out) {
  check_no_autograd("soft_threshold_out", {x, out});
  check_args(x, lam);
  check_out(out, x, {x});
  soft_threshold_into(x, {}, lam, out);
}

}  // namespace rda_ext
