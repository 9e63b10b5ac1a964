#include "ops/common.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cmath>
#include <optional>

namespace rda_ext {

void check_no_autograd(const char* op, std::initializer_list<at::Tensor> tensors) {
  if (!at::GradMode::is_enabled()) return;
  for (const at::Tensor& t : tensors) {
    TORCH_CHECK(!(t.defined() && t.requires_grad()), "rda_ext: ", op,
                ": out=... arguments don't support automatic differentiation, but one of the arguments "
                "requires grad (the operator writes its result in place and has no gradient; use the "
                "functional form, or call it under torch.no_grad())");
  }
}

void check_lam(double lam) {
  TORCH_CHECK(std::isfinite(lam) && lam >= 0,
              "rda_ext: lam must be a finite number >= 0, got ", lam);
}

void check_floating(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(at::isFloatingType(dtype), "rda_ext: ", name, " must be a floating tensor, got dtype ",
              dtype, " (integer data is not truncated silently: convert it with .float())");
  const bool wide = dtype == at::kFloat || dtype == at::kDouble;
  const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
  TORCH_CHECK(wide || (half && t.is_cuda()), "rda_ext: ", name, " has dtype ", dtype,
              ", which the ", t.device().type(), " kernels do not implement (use float32 or float64",
              t.is_cuda() ? "" : "; float16 and bfloat16 run on CUDA", ")");
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "rda_ext: ", name, " must have the shape of ", ref_name, " ",
              ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "rda_ext: ", name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "rda_ext: ", name, " must be on the device of ", ref_name,
              " (", ref.device(), "), got ", t.device());
}

void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, "rda_ext: ", name, " must be a 2-D matrix (rows = instances, columns = ",
              "features), got ", t.dim(), " dimensions");
}

int64_t check_group_dim(int64_t dim) {
  TORCH_CHECK(dim >= -2 && dim <= 1, "rda_ext: dim must be 0, 1, -1 or -2 for a 2-D tensor, got ", dim);
  return dim < 0 ? dim + 2 : dim;
}

void check_out(const at::Tensor& out, const at::Tensor& like, std::initializer_list<at::Tensor> inputs) {
  check_like(out, "out", like, "the result");
  at::assert_no_internal_overlap(out);
  for (const auto& input : inputs) {
    if (!out.storage().is_alias_of(input.storage())) continue;
    // torch answers "too hard" for two non-dense views of one buffer; only the input itself (same
    // first element, same strides) or memory apart from it is safe to write.
    const bool in_place = out.data_ptr() == input.data_ptr() && out.strides() == input.strides();
    TORCH_CHECK(in_place || at::get_overlap_status(out, input) == at::MemOverlapStatus::No,
                "rda_ext: out and an input refer to some of the same memory (a partial overlap, a single memory "
                "location read and written at different indices): pass the input itself as out, or memory "
                "apart from every input");
  }
}

at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& ref) {
  if (t.is_non_overlapping_and_dense() && t.strides() == ref.strides()) return t;
  return at::empty_like(ref).copy_(t);
}

at::Tensor out_like(const at::Tensor& out, const at::Tensor& ref) {
  if (out.is_non_overlapping_and_dense() && out.strides() == ref.strides()) return out;
  return at::empty_like(ref);
}

namespace {

// The leading dimension of x read as a Matrix in the given orientation, if its strides allow.
std::optional<int64_t> leading_dim(const at::Tensor& x, bool transposed) {
  const int64_t o = transposed ? 1 : 0, i = 1 - o;
  if (x.size(i) > 1 && x.stride(i) != 1) return std::nullopt;
  if (x.size(o) <= 1) return std::max<int64_t>(x.size(i), 1);
  if (x.stride(o) < std::max<int64_t>(x.size(i), 1)) return std::nullopt;
  return x.stride(o);
}

}  // namespace

bool stored_transposed(const at::Tensor& x) {
  return !leading_dim(x, false) && leading_dim(x, true);
}

namespace {
// An uninitialised compact matrix of like's shape, stored in the given orientation.
Matrix new_matrix(const at::Tensor& like, bool transposed) {
  const int64_t rows = like.size(0), cols = like.size(1);
  if (!transposed) return {at::empty({rows, cols}, like.options()), std::max<int64_t>(cols, 1)};
  return {at::empty({cols, rows}, like.options()).t(), std::max<int64_t>(rows, 1)};
}
}  // namespace

Matrix as_matrix(const at::Tensor& x, bool transposed) {
  if (auto ld = leading_dim(x, transposed)) return {x, *ld};
  Matrix copy = new_matrix(x, transposed);
  copy.t.copy_(x);
  return copy;
}

Matrix out_matrix(const at::Tensor& out, bool transposed) {
  if (auto ld = leading_dim(out, transposed)) return {out, *ld};
  return new_matrix(out, transposed);
}

void finish_out(const at::Tensor& out, const at::Tensor& result) {
  if (!result.is_same(out)) out.copy_(result);
}

GroupArgs group_args(const Matrix& x, const Matrix& y, bool transposed, int64_t dim) {
  GroupArgs a;
  a.outer = x.t.size(transposed ? 1 : 0);
  a.inner = x.t.size(transposed ? 0 : 1);
  // dim = 1 makes each row a group: the outer rows of a row-major view, the inner of a transposed one.
  a.inner_groups = (dim == 1) != transposed;
  a.x = x.t;
  a.x_ld = x.ld;
  a.y = y.t;
  a.y_ld = y.t.defined() ? y.ld : 0;
  return a;
}

}  // namespace rda_ext
