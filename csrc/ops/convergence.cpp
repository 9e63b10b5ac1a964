// convergence(X, L, S, LS_prev): the stopping numbers of RDA, c1 = ||X - L - S||_F / ||X||_F and
// c2 = ||LS_prev - L - S||_F / ||X||_F, in one pass over the four operands, summed in float64.
// Where ||X||_F = 0 both are the plain norms. Returns a float64 tensor [c1, c2] on X's device.
// convergence_step(X, L, S, LS_prev) returns the same numbers and then holds LS_prev = L + S for
// the next iteration, written in the same pass: the loop reads L and S once instead of twice.
// With norms=true both return the three norms instead, [||X||, ||X - L - S||, ||LS_prev - L - S||]
// (float64): a fit whose rows are split over processes combines each rank's norms into the ratios.
// Kernels: cpu/convergence.cpp, cuda/convergence.cu.

#include "kernels.h"
#include "ops/common.h"
#include "ops/ops.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty.h>

#include <utility>

namespace rda_ext {

namespace {

void check_args(const at::Tensor& X, const at::Tensor& L, const at::Tensor& S, const at::Tensor& LS_prev) {
  check_floating(X, "X");
  check_like(L, "L", X, "X");
  check_like(S, "S", X, "X");
  check_like(LS_prev, "LS_prev", X, "X");
}

at::Tensor run(const at::Tensor& X, const at::Tensor& L, const at::Tensor& S, const at::Tensor& LS_prev, bool update,
               bool norms) {
  at::Tensor out = at::empty({norms ? 3 : 2}, X.options().dtype(at::kDouble));
  if (X.numel() == 0) return out.zero_();
  const at::Tensor Xd = dense(X);
  const at::Tensor P = in_layout_of(LS_prev, Xd);
  kernels_for(Xd).convergence({Xd, in_layout_of(L, Xd), in_layout_of(S, Xd), P, out, update, norms});
  if (update) finish_out(LS_prev, P);
  return out;
}

}  // namespace

at::Tensor convergence(const at::Tensor& X, const at::Tensor& L, const at::Tensor& S, const at::Tensor& LS_prev,
                       bool norms) {
  check_args(X, L, S, LS_prev);
  return run(X, L, S, LS_prev, false, norms);
}

at::Tensor convergence_step(const at::Tensor& X, const at::Tensor& L, const at::Tensor& S, const at::Tensor& LS_prev,
                            bool norms) {
  check_no_autograd("convergence_step", {X, L, S, LS_prev});
  check_args(X, L, S, LS_prev);
  // LS_prev is written while X, L and S are read: it must share no memory with them. Views whose
  // overlap torch cannot decide (two strided views of one storage) are refused too.
  at::assert_no_internal_overlap(LS_prev);
  for (const auto& [t, name] : {std::pair{&X, "X"}, {&L, "L"}, {&S, "S"}}) {
    const bool apart = !LS_prev.storage().is_alias_of(t->storage()) ||
                       at::get_overlap_status(LS_prev, *t) == at::MemOverlapStatus::No;
    TORCH_CHECK(apart, "rda_ext: LS_prev must share no ",
                "memory with ", name, " (convergence_step writes LS_prev while it reads ", name, ")");
  }
  return run(X, L, S, LS_prev, true, norms);
}

}  // namespace rda_ext
