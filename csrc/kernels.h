#pragma once
// The device kernels behind the operators. The operator front ends (csrc/ops/) validate the
// arguments, choose the memory layout and allocate; a kernel only reads and writes the memory
// it is given, so each device implements exactly the arithmetic and nothing else.

#include <ATen/core/TensorBase.h>

#include <cstdint>

namespace rda_ext {

// Element-wise soft-thresholding of r = x - y (y absent: r = x) over numel elements that x, y
// and out lay out identically in memory (dense, same strides). out may alias x or y.
struct SoftThresholdArgs {
  at::TensorBase x, y, out;
  double lam;
};

// A 2-D view of outer x inner elements whose inner dimension is contiguous: element (o, i) of
// an operand lives at data[o * ld + i]. Groups are the outer rows (inner_groups) or the inner
// columns. r = x - y (y absent: r = x).
struct GroupArgs {
  int64_t outer, inner;
  bool inner_groups;
  at::TensorBase x, y;
  int64_t x_ld, y_ld;
};

// out = r scaled per group by max(0, 1 - lam / ||group||), exactly 0 where ||group|| <= lam.
// With given_norms defined (one per group, contiguous, r's dtype), those are the groups' norms
// and the kernel does not compute them.
struct GroupShrinkArgs : GroupArgs {
  at::TensorBase out;
  int64_t out_ld;
  double lam;
  at::TensorBase given_norms;
};

// norms[g] = ||group g of r||_2, one per group, in r's dtype.
struct GroupNormsArgs : GroupArgs {
  at::TensorBase norms;
};

// out (2 float64) = ||X - L - S||, ||P - L - S|| over ||X|| (over 1 where ||X|| = 0), with all
// four operands laid out identically in memory. With update set, P = L + S is written in the same
// pass, after each element of P has been read. With norms set, out (3 float64) holds the norms
// themselves, ||X||, ||X - L - S|| and ||P - L - S||: what a row-sharded fit combines over ranks.
struct ConvergenceArgs {
  at::TensorBase X, L, S, P, out;
  bool update = false;
  bool norms = false;
};

struct Kernels {
  void (*soft_threshold)(const SoftThresholdArgs&);
  void (*group_shrink)(const GroupShrinkArgs&);
  void (*group_norms)(const GroupNormsArgs&);
  void (*convergence)(const ConvergenceArgs&);
};

namespace cpu {
void soft_threshold(const SoftThresholdArgs&);
void group_shrink(const GroupShrinkArgs&);
void group_norms(const GroupNormsArgs&);
void convergence(const ConvergenceArgs&);
}  // namespace cpu

namespace cuda {
void soft_threshold(const SoftThresholdArgs&);
void group_shrink(const GroupShrinkArgs&);
void group_norms(const GroupNormsArgs&);
void convergence(const ConvergenceArgs&);
}  // namespace cuda

// The kernels of the device a tensor lives on; a clear error for a device that was not built.
const Kernels& kernels_for(const at::TensorBase& t);

bool cuda_kernels_compiled();

}  // namespace rda_ext
