"""A fingerprint of a data matrix: the hash of its bytes, so that a state written for one data set
(a checkpoint, the S of a warm start) is never taken up by another. Sums and norms would not do:
the same rows in another order, swapped columns or any data of equal sums pass them."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

# Rows are hashed in blocks of about this many bytes: a tensor on a GPU is copied to the host a block
# at a time, never whole.
_BLOCK_BYTES = 1 << 24


class Fingerprint:
    """The SHA-256 of a matrix's dtype, shape and values in row-major order, fed its rows in order,
    a block at a time: a pass that writes the matrix can hash each block as it is written.
    (SHA-256 because the processors' SHA extensions make it the fastest of hashlib's here, about
    three times BLAKE2b.)"""

    def __init__(self, dtype: torch.dtype, shape: tuple[int, ...]):
        self._hash = hashlib.sha256(f"{dtype} {tuple(shape)}".encode())

    def update(self, rows: Tensor) -> None:
        """Hash the next ``rows`` (any layout or device), copied to the host a block at a time."""
        if rows.numel():
            step = max(1, _BLOCK_BYTES // (rows.element_size() * rows[0].numel()))
            for start in range(0, rows.shape[0], step):
                block = rows[start:start + step].detach().to("cpu", copy=False).contiguous()
                self._hash.update(block.view(torch.uint8).numpy())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def fingerprint(X: Tensor) -> str:
    """The ``Fingerprint`` of X: equal for equal matrices and, but for a collision, different otherwise."""
    digest = Fingerprint(X.dtype, X.shape)
    digest.update(X)
    return digest.hexdigest()
