"""K autoencoders of one architecture trained side by side: their weights stacked along a first
dimension, every layer one batched matrix product (``torch.baddbmm``) for all K, one optimizer
step for all K. Adam and SGD update each entry on its own, and the loss is the sum of the K mean
squared errors, so network k follows exactly the updates it would get alone (to the rounding of
the batched products): K fits at the cost of one step's fixed overheads.

``StackedNetworks`` trains them for K RDA fits of one X (e.g. K values of lam), each with its own
L and S, on the same minibatches."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rda_ext.solver.autoencoder import ACTIVATIONS, DeepAutoencoder
from rda_ext.solver.training import Network


class StackedAutoencoder(nn.Module):
    """The networks ``nets`` (DeepAutoencoders of one architecture) as one module whose forward
    maps x of shape (K, rows, features) to the K reconstructions."""

    def __init__(self, nets: list[DeepAutoencoder]):
        super().__init__()
        self.architecture = nets[0].architecture
        if any(net.architecture != self.architecture for net in nets):
            raise ValueError("stacked networks must share one architecture")
        self.sizes, activation, output_activation, self.tied = self.architecture
        self.act, self.out_act = ACTIVATIONS[activation], ACTIVATIONS[output_activation]

        def stack(name):
            return nn.ParameterList(
                nn.Parameter(torch.stack([getattr(net, name)[i].detach() for net in nets]))
                for i in range(len(getattr(nets[0], name)))
            )

        self.enc_weight, self.enc_bias = stack("enc_weight"), stack("enc_bias")
        self.dec_weight, self.dec_bias = stack("dec_weight"), stack("dec_bias")

    def __len__(self) -> int:
        return self.enc_weight[0].shape[0]

    def forward(self, x: Tensor) -> Tensor:
        for w, b in zip(self.enc_weight, self.enc_bias):
            x = self.act(torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)))
        # Tied: the decoder's weight is the encoder's transposed, so x @ w (shapes (K, in, out) after
        # the mirror) without a transpose.
        weights = list(reversed(self.enc_weight)) if self.tied else [w.transpose(1, 2) for w in self.dec_weight]
        last = len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, self.dec_bias)):
            x = (self.out_act if i == last else self.act)(torch.baddbmm(b.unsqueeze(1), x, w))
        return x

    def network(self, k: int) -> DeepAutoencoder:
        """Network k as a DeepAutoencoder of its own (a copy of its weights)."""
        # Its own generator: the initial weights, overwritten next, must not draw from torch's global one.
        net = DeepAutoencoder(*self.architecture, torch.Generator()).to(device=self.enc_bias[0].device,
                                                                        dtype=self.enc_bias[0].dtype)
        with torch.no_grad():
            for name in ("enc_weight", "enc_bias", "dec_weight", "dec_bias"):
                for mine, theirs in zip(getattr(net, name), getattr(self, name)):
                    mine.copy_(theirs[k])
        return net


class StackedNetworks(Network):
    """``Network`` for K fits of one X: the stack trains on the K matrices L (K, n, d) on shared
    minibatches (the same rows of each), fit k on L[k]; one fused step trains all K."""

    batch_dim = 1

    def __len__(self) -> int:
        return len(self.model)

    def new_L(self, X: Tensor) -> Tensor:
        return torch.empty((len(self), *X.shape), dtype=X.dtype, device=X.device)

    def part(self, L: Tensor, k: int) -> Tensor:
        return L[k]

    def network(self, k: int) -> DeepAutoencoder:
        return self.model.network(k)
