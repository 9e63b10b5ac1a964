"""The deep autoencoder of RDA: a stack of dense layers whose decoder mirrors the encoder."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def identity(x: Tensor) -> Tensor:
    """The "linear" activation, a named function so that a model pickles."""
    return x


ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
    "elu": F.elu,
    "tanh": torch.tanh,
    "leaky_relu": F.leaky_relu,
    "gelu": F.gelu,
    "linear": identity,
}


class DeepAutoencoder(nn.Module):
    """``sizes = (n_features, h1, ..., hk)``: encoder n_features -> h1 -> ... -> hk, decoder the
    mirror image. With ``tied`` the decoder reuses the transposed encoder weights (with biases of
    its own), as the authors' code does. Every layer applies ``activation`` except the decoder's
    last, which applies ``output_activation``. Weights are Glorot-uniform (the TensorFlow default
    the paper used), drawn from ``generator``."""

    def __init__(
        self,
        sizes: tuple[int, ...],
        activation: str = "sigmoid",
        output_activation: str = "sigmoid",
        tied: bool = True,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        # What the network is, beyond its weights: a warm start continues only the same network.
        self.architecture = (self.sizes, activation, output_activation, bool(tied))
        self.act = ACTIVATIONS[activation]
        self.out_act = ACTIVATIONS[output_activation]
        self.tied = tied
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        self.enc_weight = nn.ParameterList(_glorot(o, i, generator) for i, o in pairs)
        self.enc_bias = nn.ParameterList(nn.Parameter(torch.zeros(o)) for _, o in pairs)
        self.dec_weight = nn.ParameterList(() if tied else (_glorot(i, o, generator) for i, o in reversed(pairs)))
        self.dec_bias = nn.ParameterList(nn.Parameter(torch.zeros(i)) for i, _ in reversed(pairs))

    def encode(self, x: Tensor) -> Tensor:
        for w, b in zip(self.enc_weight, self.enc_bias):
            x = self.act(F.linear(x, w, b))
        return x

    def decode(self, h: Tensor) -> Tensor:
        weights = [w.t() for w in reversed(self.enc_weight)] if self.tied else list(self.dec_weight)
        last = len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, self.dec_bias)):
            h = (self.out_act if i == last else self.act)(F.linear(h, w, b))
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def _glorot(fan_out: int, fan_in: int, generator: torch.Generator | None) -> nn.Parameter:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    w = torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=generator)
    return nn.Parameter(w)
