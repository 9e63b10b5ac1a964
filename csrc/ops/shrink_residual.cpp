// shrink_residual(X, L, lam, penalty, norms=None): S = prox(X - L) without materialising X - L.
// The kernels read both operands and form the residual in registers: one pass for "l1" and
// "l21_rows" on row-major data, two for "l21_cols" (the column norms come first). Given the
// residual's group norms (group_norms(X, dim, minus=L), which the caller often needs anyway, e.g.
// for a contamination threshold or the outlier scores) the l2,1 penalties take one pass and do
// not compute the norms again.
// Kernels: those of soft_threshold ("l1") and group_shrink ("l21_*").

#include "kernels.h"
#include "ops/common.h"
#include "ops/ops.h"
#include "ops/penalty.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty_like.h>

#include <utility>

namespace rda_ext {

const Penalty& check_penalty(std::string_view name) {
  for (const Penalty& p : kPenalties) {
    if (p.name == name) return p;
  }
  TORCH_CHECK(false, "rda_ext: penalty must be one of \"l1\", \"l21_rows\", \"l21_cols\", got \"", name, "\"");
}

namespace {

// The checked penalty, and the given norms as the kernels read them (undefined if none).
std::pair<const Penalty*, at::Tensor> check_args(const at::Tensor& X, const at::Tensor& L, double lam,
                                                 std::string_view penalty, const std::optional<at::Tensor>& norms) {
  check_floating(X, "X");
  check_like(L, "L", X, "X");
  check_lam(lam);
  const Penalty& p = check_penalty(penalty);
  if (p.group_dim != kEntries) check_matrix(X, "X");
  if (!norms.has_value()) return {&p, at::Tensor()};
  TORCH_CHECK(p.group_dim != kEntries, "rda_ext: norms are the group norms of an l2,1 penalty; penalty \"",
              p.name, "\" has single entries as groups (pass norms=None)");
  const at::Tensor& n = *norms;
  const int64_t groups = X.size(1 - p.group_dim);
  TORCH_CHECK(n.dim() == 1 && n.size(0) == groups, "rda_ext: norms must be a vector of the ", groups,
              " group norms of X - L (one per ", p.group_dim == 1 ? "row" : "column", "), got shape ", n.sizes());
  TORCH_CHECK(n.scalar_type() == X.scalar_type(), "rda_ext: norms must have the dtype of X (", X.scalar_type(),
              "), got ", n.scalar_type());
  TORCH_CHECK(n.device() == X.device(), "rda_ext: norms must be on the device of X (", X.device(), "), got ",
              n.device());
  return {&p, n.contiguous()};
}

void run(const at::Tensor& X, const at::Tensor& L, double lam, const Penalty& p, const at::Tensor& out,
         const at::Tensor& norms) {
  if (p.group_dim == kEntries) return soft_threshold_into(X, L, lam, out);
  group_shrink_into(X, L, lam, p.group_dim, out, norms);
}

}  // namespace

at::Tensor shrink_residual(const at::Tensor& X, const at::Tensor& L, double lam, std::string_view penalty,
                           const std::optional<at::Tensor>& norms) {
  const auto [p, n] = check_args(X, L, lam, penalty, norms);
  at::Tensor out = at::empty_like(X);
  run(X, L, lam, *p, out, n);
  return out;
}

void shrink_residual_out(const at::Tensor& X, const at::Tensor& L, double lam, std::string_view penalty,
                         const at::Tensor& out, const std::optional<at::Tensor>& norms) {
  check_no_autograd("shrink_residual_out", {X, L, out, norms.value_or(at::Tensor())});
  const auto [p, n] = check_args(X, L, lam, penalty, norms);
  check_out(out, X, {X, L});
  if (n.defined()) at::assert_no_overlap(out, n);
  run(X, L, lam, *p, out, n);
}

}  // namespace rda_ext
