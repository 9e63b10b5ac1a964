"""The detectors RDA is compared with in the papers, on the same device-resident training loop:
a plain autoencoder and a variational autoencoder scored by reconstruction error, and RCAE
(Chalapathy et al. 2017). Each returns continuous row scores (higher = more outlying) and, where
the method decides by itself, the flagged rows."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rda_ext import ops
from rda_ext.estimator import scoring
from rda_ext.solver import survival_threshold
from rda_ext.solver.autoencoder import DeepAutoencoder
from rda_ext.solver.schedule import Schedule
from rda_ext.solver.training import make_optimizer, map_chunks, train_epochs
from rda_ext.validation import CHOICES, resolve_device


def _setup(X: np.ndarray, device: str, seed: int) -> tuple[Tensor, torch.Generator, torch.Generator]:
    dev = resolve_device(device)
    data = torch.as_tensor(np.asarray(X, dtype=np.float32), device=dev)
    return data, torch.Generator().manual_seed(seed), torch.Generator(device=dev).manual_seed(seed)


def _row_errors(model, data: Tensor) -> np.ndarray:
    model.eval()
    return map_chunks(lambda x: ops.group_norms(x - model(x), 1), data).double().cpu().numpy()


def autoencoder_scores(X, hidden=(400, 200), epochs=200, batch_size=64, lr=1e-3, activation="sigmoid",
                       device="auto", seed=0, outlier_score="residual", contamination=None) -> np.ndarray:
    """A plain autoencoder (RDA's network: tied weights, sigmoid output) trained on X itself; the
    score of a row is the norm of its reconstruction error, or with another outlier_score RDA's score
    of that name (rda_ext.estimator.scoring), its reference rows the (1 - contamination) fraction
    with the smallest errors."""
    if outlier_score not in CHOICES["outlier_score"]:
        raise ValueError(f"outlier_score must be one of {', '.join(map(repr, CHOICES['outlier_score']))}, "
                         f"got {outlier_score!r}")
    if outlier_score != "residual" and not (contamination is not None and 0 < contamination < 0.5):
        raise ValueError(f'outlier_score="{outlier_score}" needs a contamination in (0, 0.5), got {contamination!r}')
    data, init, batches = _setup(X, device, seed)
    model = DeepAutoencoder((data.shape[1], *hidden), activation, generator=init).to(data.device)
    train_epochs(model, make_optimizer(model, "adam", lr), data, Schedule(epochs, batch_size), batches)
    errors = _row_errors(model, data)
    if outlier_score == "residual":
        return errors
    reference = torch.from_numpy(errors <= np.quantile(errors, 1 - contamination)).to(data.device)
    codes = None if outlier_score == "knn" else map_chunks(model.encode, data)  # the distance alone reads neither
    recon = None if codes is None else map_chunks(model.decode, codes)
    return scoring.reference_scores(outlier_score, data, recon, codes, reference, seed)[0].cpu().numpy()


class VariationalAutoencoder(nn.Module):
    """The VAE of the PyTorch example (and of the PyTorch reproduction of RDA's experiments):
    encoder n -> hidden -> (mu, logvar) of ``latent`` dimensions, decoder latent -> hidden -> n
    with a sigmoid output. ``forward`` decodes the mean, the deterministic reconstruction."""

    def __init__(self, n_features: int, hidden: int = 400, latent: int = 20):
        super().__init__()
        self.enc = nn.Linear(n_features, hidden)
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec1 = nn.Linear(latent, hidden)
        self.dec2 = nn.Linear(hidden, n_features)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.enc(x))
        return self.mu(h), self.logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.dec2(F.relu(self.dec1(z))))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)[0])

    def loss(self, x: Tensor) -> Tensor:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.binary_cross_entropy(self.decode(z), x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.square() - logvar.exp())
        return (recon + kl) / x.shape[0]


def vae_scores(X, hidden=400, latent=20, epochs=200, batch_size=64, lr=1e-3, device="auto", seed=0) -> np.ndarray:
    """A VAE trained on X (ELBO with a Bernoulli likelihood, so X must lie in [0, 1]); the score
    of a row is the norm of the error of its mean reconstruction."""
    data, _, batches = _setup(X, device, seed)
    torch.manual_seed(seed)
    model = VariationalAutoencoder(data.shape[1], hidden, latent).to(data.device)
    train_epochs(model, make_optimizer(model, "adam", lr), data, Schedule(epochs, batch_size), batches, loss_fn=model.loss)
    return _row_errors(model, data)


def rcae(X, lam=None, contamination=None, hidden=(400, 200), outer_iter=20, inner_epochs=10, batch_size=64,
         lr=1e-3, weight_decay=1e-5, activation="sigmoid", device="auto", seed=0) -> tuple[np.ndarray, np.ndarray]:
    """The robust autoencoder of Chalapathy et al. (RCAE, 2017) with dense layers, for outlying
    rows: the network is trained on the input X with the target X - N (weight decay on its weights),
    then N = prox of (lam / 2) ||.||_{2,1} over the rows of X - AE(X). With ``contamination``
    instead of ``lam``, the threshold lets that fraction of the rows survive at each step.
    Returns (scores = row norms of X - AE(X), flagged = rows where N is non-zero)."""
    if (lam is None) == (contamination is None):
        raise ValueError("give exactly one of lam and contamination")
    data, init, batches = _setup(X, device, seed)
    model = DeepAutoencoder((data.shape[1], *hidden), activation, generator=init).to(data.device)
    opt = make_optimizer(model, "adam", lr, weight_decay)
    N = torch.zeros_like(data)
    R = torch.empty_like(data)
    for _ in range(outer_iter):
        train_epochs(model, opt, data, Schedule(inner_epochs, batch_size), batches, target=data - N)
        model.eval()
        with torch.no_grad():
            torch.sub(data, map_chunks(model, data), out=R)
        threshold = lam / 2 if lam is not None else survival_threshold(ops.group_norms(R, 1), contamination)
        ops.group_shrink(R, threshold, 1, out=N)
    scores = ops.group_norms(R, 1).double().cpu().numpy()
    flagged = (ops.group_norms(N, 1) > 0).cpu().numpy().astype(np.int64)
    return scores, flagged
