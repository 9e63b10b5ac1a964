#pragma once
// What every operator front end shares: argument checks with messages that name the argument,
// and the choice of a memory layout that the device kernels can stream through.

#include "kernels.h"

#include <ATen/core/Tensor.h>

#include <string_view>

namespace rda_ext {

// lam must be finite and >= 0.
void check_lam(double lam);

// A floating tensor of a dtype the device's kernels implement.
void check_floating(const at::Tensor& t, const char* name);

// t has ref's shape, dtype and device.
void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name);

void check_matrix(const at::Tensor& t, const char* name);

// The dim of a 2-D tensor that the group norms reduce over, wrapped to 0 or 1.
int64_t check_group_dim(int64_t dim);

// out may be written: it has like's shape, dtype and device, no element shared by two indices,
// and it is either one of the inputs exactly or overlaps none of them.
void check_out(const at::Tensor& out, const at::Tensor& like, std::initializer_list<at::Tensor> inputs);

// The mutating operators (the *_out ones, convergence_step) have no autograd formula: with grad
// mode on, none of their tensors (undefined ones are skipped) may require grad, as for torch's own
// out= functions. The front ends run below the Autograd key, where requires_grad is still visible.
void check_no_autograd(const char* op, std::initializer_list<at::Tensor> tensors);

// t if its memory is one dense block, else a contiguous copy.
at::Tensor dense(const at::Tensor& t);

// t if it is laid out in memory exactly like the dense tensor ref, else a copy that is.
at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& ref);

// Where to write a result laid out like the dense tensor ref and destined for out: out itself
// when it is laid out like ref, else a new tensor that finish_out copies into out.
at::Tensor out_like(const at::Tensor& out, const at::Tensor& ref);

// A 2-D tensor read as outer x inner with the inner dimension contiguous: outer = rows for a
// row-major tensor, outer = columns for a column-major (transposed) one.
struct Matrix {
  at::Tensor t;
  int64_t ld;
};

// Whether x is stored column-major: then the kernels read it transposed rather than copy it.
bool stored_transposed(const at::Tensor& x);

// x as a Matrix in the given orientation: a view where its strides allow, else a copy.
Matrix as_matrix(const at::Tensor& x, bool transposed);

// The Matrix to write a result for out into: out itself when its strides allow, else a new one
// that finish_out copies into out.
Matrix out_matrix(const at::Tensor& out, bool transposed);
void finish_out(const at::Tensor& out, const at::Tensor& result);

// The kernel arguments for the groups of r = x - y (y undefined: r = x) that x.norm(dim) forms,
// with x (and y) read in the orientation transposed (see stored_transposed).
GroupArgs group_args(const Matrix& x, const Matrix& y, bool transposed, int64_t dim);

}  // namespace rda_ext
