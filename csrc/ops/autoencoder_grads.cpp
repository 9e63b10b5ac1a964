// autoencoder_grads(x, params, grads, depth, activation, output_activation, compute_dtype): the
// loss of RDA's autoencoder on a minibatch and the gradient of every parameter, in one call and
// without an autograd graph. The network is a plain stack of dense layers (solver/autoencoder.py):
// the encoder's `depth` layers d -> h1 -> ... -> hk, then the decoder's mirror image, whose weights
// are the encoder's transposed (tied: params = enc weights, enc biases, dec biases) or its own
// (params = enc weights, enc biases, dec weights, dec biases: the order of model.parameters()).
// Every layer applies `activation` but the decoder's last, which applies `output_activation`.
//
// x is one batch (rows, d) for one network, or K batches (K, rows, d) for K networks of one
// architecture stacked along a first dimension (solver/stacked.py): then every parameter has that
// leading K and each layer is one batched product. The loss of a network is the mean squared
// error of its reconstruction; the gradients are those of the sum of the K losses, so network k
// gets exactly the gradient of its own loss. Returns the loss (0-dim, or (K,)) and writes grads.
//
// compute_dtype (bfloat16 or float16): the products and activations run in it, as under torch's
// autocast: the weights, biases and x cast to it, the loss formed in float32 from the output, the
// backward in the forward's dtype, each gradient cast back to its parameter's dtype (a tied weight's
// two contributions are summed there). Bias gradients are summed in the parameter's dtype.
//
// Why not autograd: a step of a small network is a few dozen small products, and the graph, its
// Python calls and the engine's bookkeeping cost more than the products (benchmarks/RESULTS.md,
// "The cost of a training step"). The ops called are ATen's, so this runs on every device.

#include "ops/common.h"
#include "ops/ops.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <array>
#include <string_view>
#include <vector>

namespace rda_ext {

namespace {

enum class Activation { Sigmoid, Relu, Elu, Tanh, LeakyRelu, Gelu, Linear };

// The activations of solver/autoencoder.py, with torch's defaults (elu alpha 1, leaky_relu slope 0.01).
constexpr std::array<std::pair<std::string_view, Activation>, 7> kActivations{{
    {"sigmoid", Activation::Sigmoid},
    {"relu", Activation::Relu},
    {"elu", Activation::Elu},
    {"tanh", Activation::Tanh},
    {"leaky_relu", Activation::LeakyRelu},
    {"gelu", Activation::Gelu},
    {"linear", Activation::Linear},
}};
constexpr double kLeakySlope = 0.01;

Activation parse_activation(std::string_view name, const char* arg) {
  for (const auto& [known, a] : kActivations) {
    if (known == name) return a;
  }
  std::string names;
  for (const auto& [known, a] : kActivations) names += (names.empty() ? "" : ", ") + std::string(known);
  TORCH_CHECK(false, "rda_ext: ", arg, " must be one of ", names, ", got '", name, "'");
}

// h = act(z), in place on z except for gelu, whose backward reads z.
at::Tensor activate(Activation a, at::Tensor& z) {
  switch (a) {
    case Activation::Sigmoid: return z.sigmoid_();
    case Activation::Relu: return z.relu_();
    case Activation::Elu: return at::elu_(z);
    case Activation::Tanh: return z.tanh_();
    case Activation::LeakyRelu: return at::leaky_relu_(z, kLeakySlope);
    case Activation::Gelu: return at::gelu(z);
    case Activation::Linear: return z;
  }
  return z;
}

// The gradient at z from the gradient at h = act(z) (h is the output; z only for gelu).
at::Tensor activation_backward(Activation a, const at::Tensor& grad, const at::Tensor& h, const at::Tensor& z) {
  switch (a) {
    case Activation::Sigmoid: return at::sigmoid_backward(grad, h);
    case Activation::Relu: return at::threshold_backward(grad, h, 0);
    case Activation::Elu: return at::elu_backward(grad, 1, 1, 1, /*is_result=*/true, h);
    case Activation::Tanh: return at::tanh_backward(grad, h);
    case Activation::LeakyRelu: return at::leaky_relu_backward(grad, h, kLeakySlope, /*self_is_result=*/true);
    case Activation::Gelu: return at::gelu_backward(grad, z);
    case Activation::Linear: return grad;
  }
  return grad;
}

at::Tensor transposed(const at::Tensor& t) { return t.transpose(-2, -1); }

// bias + a @ b, for matrices (a: rows x in) or stacks of them (K x rows x in).
at::Tensor affine(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias) {
  return a.dim() == 2 ? at::addmm(bias, a, b) : at::baddbmm(bias.unsqueeze(1), a, b);
}

at::Tensor product(const at::Tensor& a, const at::Tensor& b) {
  return a.dim() == 2 ? at::mm(a, b) : at::bmm(a, b);
}

// One dense layer: z = h_in @ rhs + bias, rhs = W^T (its own weight W, out x in) or the encoder
// weight W itself (a tied decoder layer).
struct Layer {
  int64_t weight;  // index into the weights (and their gradients)
  bool tied;       // rhs = W instead of W^T
  int64_t bias;    // index into params and grads
  Activation act;
};

void check_args(const at::Tensor& x, at::TensorList params, at::TensorList grads, int64_t depth) {
  check_floating(x, "x");
  TORCH_CHECK(x.dim() == 2 || x.dim() == 3, "rda_ext: x must be a batch (rows, features) or K batches (K, rows, ",
              "features), got ", x.dim(), " dimensions");
  TORCH_CHECK(depth >= 1, "rda_ext: depth must be >= 1, got ", depth);
  TORCH_CHECK(params.size() == static_cast<size_t>(3 * depth) || params.size() == static_cast<size_t>(4 * depth),
              "rda_ext: params must hold 3 * depth tensors (tied weights) or 4 * depth (untied), got ",
              params.size(), " for depth ", depth);
  TORCH_CHECK(grads.size() == params.size(), "rda_ext: grads must hold one tensor per parameter (", params.size(),
              "), got ", grads.size());
  const int64_t stack = x.dim() - 2;  // 1 for K networks
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const bool weight = i < static_cast<size_t>(depth) || (params.size() == static_cast<size_t>(4 * depth) &&
                                                            i >= static_cast<size_t>(2 * depth) &&
                                                            i < static_cast<size_t>(3 * depth));
    TORCH_CHECK(p.dim() == (weight ? 2 : 1) + stack, "rda_ext: params[", i, "] must have ", (weight ? 2 : 1) + stack,
                " dimensions for x of ", x.dim(), ", got ", p.dim());
    TORCH_CHECK(p.scalar_type() == x.scalar_type() && p.device() == x.device(), "rda_ext: params[", i,
                "] must have x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                p.scalar_type(), ", ", p.device());
    if (stack) {
      TORCH_CHECK(p.size(0) == x.size(0), "rda_ext: params[", i, "] holds ", p.size(0), " networks, x ", x.size(0));
    }
    check_like(grads[i], "each of grads", p, "its parameter");
  }
}

}  // namespace

at::Tensor autoencoder_grads(const at::Tensor& x, at::TensorList params, at::TensorList grads, int64_t depth,
                             std::string_view activation, std::string_view output_activation,
                             std::optional<at::ScalarType> compute_dtype) {
  check_args(x, params, grads, depth);
  for (const at::Tensor& g : grads) check_no_autograd("autoencoder_grads", {g});
  const Activation act = parse_activation(activation, "activation");
  const Activation out_act = parse_activation(output_activation, "output_activation");
  const bool tied = params.size() == static_cast<size_t>(3 * depth);
  const at::ScalarType dtype = compute_dtype.value_or(x.scalar_type());
  TORCH_CHECK(dtype == x.scalar_type() || dtype == at::kBFloat16 || dtype == at::kHalf,
              "rda_ext: compute_dtype must be None, bfloat16 or float16, got ", dtype);
  c10::NoGradGuard no_grad;

  // The layers in the order of the forward pass; weights[i] are params[i] for the encoder and,
  // untied, params[2 * depth + i] for the decoder.
  std::vector<int64_t> weight_index;
  for (int64_t i = 0; i < depth; ++i) weight_index.push_back(i);
  if (!tied) {
    for (int64_t i = 0; i < depth; ++i) weight_index.push_back(2 * depth + i);
  }
  const int64_t dec_bias = tied ? 2 * depth : 3 * depth;
  std::vector<Layer> layers;
  for (int64_t i = 0; i < depth; ++i) layers.push_back({i, false, depth + i, act});
  for (int64_t m = 0; m < depth; ++m) {
    const int64_t w = tied ? depth - 1 - m : depth + m;
    layers.push_back({w, tied, dec_bias + m, m == depth - 1 ? out_act : act});
  }
  std::vector<at::Tensor> weights;  // in the compute dtype
  for (int64_t i : weight_index) weights.push_back(params[i].to(dtype));

  // Forward, keeping each layer's input (its output is the next one's input) and, for gelu, z.
  std::vector<at::Tensor> inputs{x.to(dtype)}, pre(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    const Layer& layer = layers[l];
    const at::Tensor& W = weights[layer.weight];
    at::Tensor z = affine(inputs.back(), layer.tied ? W : transposed(W), params[layer.bias].to(dtype));
    if (layer.act == Activation::Gelu) pre[l] = z;
    inputs.push_back(activate(layer.act, z));
  }
  const at::Tensor y = inputs.back();
  inputs.pop_back();

  // The loss in x's dtype, and its gradient at y: 2 (y - x) / (rows * d).
  const at::Tensor diff = y.to(x.scalar_type()) - x;
  const int64_t per_network = x.size(-2) * x.size(-1);
  const at::Tensor loss = x.dim() == 2 ? diff.square().mean() : diff.square().mean({1, 2});
  at::Tensor grad = diff.mul_(per_network ? 2.0 / static_cast<double>(per_network) : 0.0).to(dtype);

  // Backward. A tied encoder weight receives its decoder layer's gradient first, then its own.
  std::vector<bool> written(weights.size(), false);
  for (size_t l = layers.size(); l-- > 0;) {
    const Layer& layer = layers[l];
    const at::Tensor& h_in = inputs[l];
    const at::Tensor dz = activation_backward(layer.act, grad, inputs.size() > l + 1 ? inputs[l + 1] : y, pre[l]);
    at::Tensor bias_grad = grads[layer.bias];
    at::sum_out(bias_grad, dz, {-2}, false, bias_grad.scalar_type());
    // z = h_in @ rhs: d rhs = h_in^T @ dz, and W^T = rhs for a layer of its own weight.
    const at::Tensor dW = layer.tied ? product(transposed(h_in), dz) : product(transposed(dz), h_in);
    const at::Tensor& target = grads[weight_index[layer.weight]];
    if (written[layer.weight]) {
      target.add_(dW);
    } else {
      target.copy_(dW);
      written[layer.weight] = true;
    }
    if (l > 0) {
      const at::Tensor& W = weights[layer.weight];
      grad = product(dz, layer.tied ? transposed(W) : W);
    }
  }
  return loss;
}

}  // namespace rda_ext
