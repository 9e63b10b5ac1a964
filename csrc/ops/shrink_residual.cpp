// shrink_residual(X, L, lam, penalty): S = prox(X - L) without materialising X - L. The
// kernels read both operands and form the residual in registers: one pass for "l1" and
// "l21_rows" on row-major data, two for "l21_cols" (the column norms come first).
// Kernels: those of soft_threshold ("l1") and group_shrink ("l21_*").

#include "kernels.h"
#include "ops/common.h"
#include "ops/ops.h"

#include <ATen/ops/empty_like.h>

namespace rda_ext {

namespace {

enum class Penalty { L1, L21Rows, L21Cols };

Penalty check_args(const at::Tensor& X, const at::Tensor& L, double lam, std::string_view penalty) {
  check_floating(X, "X");
  check_like(L, "L", X, "X");
  check_lam(lam);
  Penalty p;
  if (penalty == "l1") p = Penalty::L1;
  else if (penalty == "l21_rows") p = Penalty::L21Rows;
  else if (penalty == "l21_cols") p = Penalty::L21Cols;
  else TORCH_CHECK(false, "rda_ext: penalty must be one of \"l1\", \"l21_rows\", \"l21_cols\", got \"",
                   penalty, "\"");
  if (p != Penalty::L1) check_matrix(X, "X");
  return p;
}

void run(const at::Tensor& X, const at::Tensor& L, double lam, Penalty p, const at::Tensor& out) {
  switch (p) {
    case Penalty::L1: return soft_threshold_into(X, L, lam, out);
    case Penalty::L21Rows: return group_shrink_into(X, L, lam, 1, out);
    case Penalty::L21Cols: return group_shrink_into(X, L, lam, 0, out);
  }
}

}  // namespace

at::Tensor shrink_residual(const at::Tensor& X, const at::Tensor& L, double lam, std::string_view penalty) {
  const Penalty p = check_args(X, L, lam, penalty);
  at::Tensor out = at::empty_like(X);
  run(X, L, lam, p, out);
  return out;
}

void shrink_residual_out(const at::Tensor& X, const at::Tensor& L, double lam, std::string_view penalty,
                         const at::Tensor& out) {
  const Penalty p = check_args(X, L, lam, penalty);
  check_out(out, X, {X, L});
  run(X, L, lam, p, out);
}

}  // namespace rda_ext
