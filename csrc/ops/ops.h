#pragma once
// The operators' C++ entry points, registered for CPU and CUDA in library.cpp. Each validates
// its arguments, lays the operands out for the kernels and calls the kernels of their device.

#include <ATen/core/Tensor.h>
#include <ATen/core/ATen_fwd.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string_view>

namespace rda_ext {

at::Tensor soft_threshold(const at::Tensor& x, double lam);
void soft_threshold_out(const at::Tensor& x, double lam, const at::Tensor& out);

at::Tensor group_shrink(const at::Tensor& x, double lam, int64_t dim);
void group_shrink_out(const at::Tensor& x, double lam, int64_t dim, const at::Tensor& out);

at::Tensor shrink_residual(const at::Tensor& X, const at::Tensor& L, double lam, std::string_view penalty,
                           const std::optional<at::Tensor>& norms);
void shrink_residual_out(const at::Tensor& X, const at::Tensor& L, double lam, std::string_view penalty,
                         const at::Tensor& out, const std::optional<at::Tensor>& norms);

at::Tensor group_norms(const at::Tensor& x, int64_t dim, const std::optional<at::Tensor>& minus);

// The launchers behind soft_threshold and group_shrink, which shrink_residual shares: they
// write the shrunk r = x - y (y undefined: r = x) into out, arguments already checked.
void soft_threshold_into(const at::Tensor& x, const at::Tensor& y, double lam, const at::Tensor& out);
// norms (undefined: computed here) are the groups' norms of r, as group_norms gives them.
void group_shrink_into(const at::Tensor& x, const at::Tensor& y, double lam, int64_t dim, const at::Tensor& out,
                       const at::Tensor& norms = {});

at::Tensor convergence(const at::Tensor& X, const at::Tensor& L, const at::Tensor& S,
                       const at::Tensor& LS_prev, bool norms);
at::Tensor convergence_step(const at::Tensor& X, const at::Tensor& L, const at::Tensor& S,
                            const at::Tensor& LS_prev, bool norms);

at::Tensor autoencoder_grads(const at::Tensor& x, at::TensorList params, at::TensorList grads, int64_t depth,
                             std::string_view activation, std::string_view output_activation,
                             std::optional<at::ScalarType> compute_dtype);

}  // namespace rda_ext
