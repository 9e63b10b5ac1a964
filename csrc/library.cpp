// The rda_ext operator library: every schema, the CPU and CUDA registrations, and build_info.

#include "kernels.h"
#include "ops/ops.h"
#include "ops/penalty.h"

#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(rda_ext, m) {
  m.def("soft_threshold(Tensor x, float lam) -> Tensor");
  m.def("soft_threshold_out(Tensor x, float lam, Tensor(a!) out) -> ()");
  m.def("group_shrink(Tensor x, float lam, int dim) -> Tensor");
  m.def("group_shrink_out(Tensor x, float lam, int dim, Tensor(a!) out) -> ()");
  m.def("shrink_residual(Tensor X, Tensor L, float lam, str penalty, Tensor? norms=None) -> Tensor");
  m.def("shrink_residual_out(Tensor X, Tensor L, float lam, str penalty, Tensor(a!) out, Tensor? norms=None) -> ()");
  m.def("group_norms(Tensor x, int dim, Tensor? minus=None) -> Tensor");
  m.def("convergence(Tensor X, Tensor L, Tensor S, Tensor LS_prev, bool norms=False) -> Tensor");
  m.def("convergence_step(Tensor X, Tensor L, Tensor S, Tensor(a!) LS_prev, bool norms=False) -> Tensor");
  m.def("autoencoder_grads(Tensor x, Tensor[] params, Tensor(a!)[] grads, int depth, str activation, "
        "str output_activation, ScalarType? compute_dtype=None) -> Tensor");
}

// The front ends are device-agnostic (they call kernels_for(tensor)), so both keys register them.
#define RDA_EXT_REGISTER_ALL(m)                                \
  m.impl("soft_threshold", &rda_ext::soft_threshold);          \
  m.impl("soft_threshold_out", &rda_ext::soft_threshold_out);  \
  m.impl("group_shrink", &rda_ext::group_shrink);              \
  m.impl("group_shrink_out", &rda_ext::group_shrink_out);      \
  m.impl("shrink_residual", &rda_ext::shrink_residual);        \
  m.impl("shrink_residual_out", &rda_ext::shrink_residual_out); \
  m.impl("group_norms", &rda_ext::group_norms);                \
  m.impl("convergence", &rda_ext::convergence);                \
  m.impl("convergence_step", &rda_ext::convergence_step);      \
  m.impl("autoencoder_grads", &rda_ext::autoencoder_grads)

TORCH_LIBRARY_IMPL(rda_ext, CPU, m) { RDA_EXT_REGISTER_ALL(m); }

#ifdef RDA_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(rda_ext, CUDA, m) { RDA_EXT_REGISTER_ALL(m); }
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "rda_ext compiled kernels; importing this module registers the torch.ops.rda_ext operators";
  m.def("build_info", [] {
    py::dict info;
    info["version"] = RDA_EXT_VERSION;
    info["torch_built_against"] = RDA_EXT_TORCH_VERSION;
    info["cuda_kernels"] = rda_ext::cuda_kernels_compiled();
#ifdef _OPENMP
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
    info["intra_op_threads"] = at::get_num_threads();
    return info;
  }, "How this build of rda_ext was compiled, and the intra-op threads it runs with now.");
  m.def("penalties", [] {
    py::dict table;
    for (const rda_ext::Penalty& p : rda_ext::kPenalties) {
      table[py::str(p.name.data(), p.name.size())] =
          p.group_dim == rda_ext::kEntries ? py::object(py::none()) : py::object(py::int_(p.group_dim));
    }
    return table;
  }, "Each penalty's name and the dim its group norms reduce (None: every entry is a group).");
}
