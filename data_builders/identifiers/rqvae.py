"""RQ-VAE (TIGER / MiniOneRec style): the learned alternative to residual k-means.

An MLP encoder maps an embedding to a small latent; `levels` codebooks quantize it
residually (each level quantizes what the previous ones left); an MLP decoder rebuilds the
embedding from the sum of chosen codewords. Loss = reconstruction MSE + codebook loss +
beta * commitment loss, with the straight-through estimator. Codebooks start from residual
k-means on the initial latents (as MiniOneRec does), which avoids dead codes early.

Small enough to train on CPU: Scientific (4k x 384) takes well under a minute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from data_builders.identifiers.embed import check_finite
from data_builders.identifiers.rq_kmeans import ResidualKMeans

logger = logging.getLogger(__name__)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RQVAEModel(nn.Module):
    def __init__(self, in_dim: int, hidden: list[int], latent_dim: int, levels: int, codebook_size: int):
        super().__init__()
        self.encoder = _mlp([in_dim, *hidden, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden), in_dim])
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.randn(codebook_size, latent_dim) * 0.01) for _ in range(levels)]
        )

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (quantized sum, codes (B, L), codebook+commitment terms per level summed, last-level input)."""
        residual = z
        quantized = torch.zeros_like(z)
        codes, cb_loss, commit_loss = [], z.new_zeros(()), z.new_zeros(())
        last_input = residual
        for codebook in self.codebooks:
            last_input = residual
            idx = torch.cdist(residual, codebook).argmin(dim=1)
            chosen = codebook[idx]
            cb_loss = cb_loss + ((chosen - residual.detach()) ** 2).mean()
            commit_loss = commit_loss + ((residual - chosen.detach()) ** 2).mean()
            quantized = quantized + chosen
            residual = residual - chosen.detach()
            codes.append(idx)
        return quantized, torch.stack(codes, dim=1), torch.stack([cb_loss, commit_loss]), last_input

    @torch.no_grad()
    def restart_dead_codes(self, x: torch.Tensor, gen: torch.Generator) -> int:
        """Move every code that no row of `x` uses onto a random residual of `x` at its level.

        A code that loses all its items gets no gradient again, so without this a codebook
        shrinks to a handful of live codes and most items collide (Jukebox, SoundStream do the same).
        """
        residual = self.encoder(x)
        restarted = 0
        for codebook in self.codebooks:
            idx = torch.cdist(residual, codebook).argmin(dim=1)
            dead = (torch.bincount(idx, minlength=len(codebook)) == 0).nonzero().squeeze(1)
            if len(dead):
                codebook[dead] = residual[torch.randint(len(residual), (len(dead),), generator=gen)]
                idx = torch.cdist(residual, codebook).argmin(dim=1)
                restarted += len(dead)
            residual = residual - codebook[idx]
        return restarted

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        quantized, codes, losses, _ = self.quantize(z)
        z_q = z + (quantized - z).detach()  # straight-through
        return self.decoder(z_q), codes, losses


@dataclass
class RQVAE:
    """Train with `fit(x)`; `encode(x, return_residuals=True)` feeds collision resolution."""

    levels: int = 3
    codebook_size: int = 256
    latent_dim: int = 32
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    epochs: int = 200
    batch_size: int = 1024
    lr: float = 1e-3
    beta: float = 0.25
    restart_sample: int = 65536  # rows checked for dead codes after every epoch
    seed: int = 0
    model: RQVAEModel | None = None
    history: list[dict] = field(default_factory=list)
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    def _standardize(self, x: np.ndarray) -> torch.Tensor:
        """Per-dimension z-scores: sentence embeddings are unit vectors whose coordinates are
        ~0.05, so unscaled latents start near zero and the codebooks collapse onto a few codes."""
        return torch.from_numpy(
            ((np.asarray(x, dtype=np.float32) - self.mean) / self.scale).astype(np.float32)
        )

    def fit(self, x: np.ndarray) -> RQVAE:
        check_finite(x)
        torch.manual_seed(self.seed)
        x = np.asarray(x, dtype=np.float32)
        self.mean = x.mean(axis=0)
        self.scale = np.maximum(x.std(axis=0), 1e-6)
        data = self._standardize(x)
        self.model = RQVAEModel(x.shape[1], self.hidden, self.latent_dim, self.levels, self.codebook_size)
        with torch.no_grad():  # k-means init of every codebook on the initial latents
            latents = self.model.encoder(data).numpy()
            init = ResidualKMeans(self.levels, self.codebook_size, niter=10, seed=self.seed).fit(latents)
            for codebook, centroids in zip(self.model.codebooks, init.codebooks):
                codebook.copy_(torch.from_numpy(centroids))
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        for epoch in range(self.epochs):
            perm = torch.randperm(len(data), generator=gen)
            totals = np.zeros(3)
            for start in range(0, len(data), self.batch_size):
                batch = data[perm[start : start + self.batch_size]]
                recon, _, (cb, commit) = self.model(batch)
                rec = ((recon - batch) ** 2).mean()
                loss = rec + cb + self.beta * commit
                opt.zero_grad()
                loss.backward()
                opt.step()
                totals += [rec.item() * len(batch), cb.item() * len(batch), commit.item() * len(batch)]
            restarted = self.model.restart_dead_codes(data[perm[: self.restart_sample]], gen)
            if epoch == self.epochs - 1 or epoch % 50 == 0:
                rec, cb, commit = (totals / len(data)).tolist()
                self.history.append(
                    {"epoch": epoch, "recon": rec, "codebook": cb, "commit": commit, "restarted": restarted}
                )
                logger.info(
                    "rqvae epoch %d: recon %.5f codebook %.5f commit %.5f, %d dead codes restarted",
                    epoch, rec, cb, commit, restarted,
                )  # fmt: skip
        return self

    @property
    def last_codebook(self) -> np.ndarray:
        return self.model.codebooks[-1].detach().numpy().copy()

    @torch.no_grad()
    def encode(self, x: np.ndarray, return_residuals: bool = False, batch: int = 65536):
        check_finite(x)
        codes, last_inputs = [], []
        for start in range(0, len(x), batch):
            z = self.model.encoder(self._standardize(x[start : start + batch]))
            _, c, _, last = self.model.quantize(z)
            codes.append(c.numpy())
            last_inputs.append(last.numpy())
        codes_arr = np.concatenate(codes).astype(np.int64)
        return (codes_arr, np.concatenate(last_inputs)) if return_residuals else codes_arr
