"""Stage 2 of GLANN / video GLO: learn to sample new latent codes that look like the trained GLO codes.

Each mapping is fitted on the (N, nz) table of GLO codes and then draws new codes for the generator:

- ``imle``: GLANN's IMLE ("ICP") mapper T: noise e (dim 16 in video GLO, 32 in GLANN) -> code. Every
  epoch it maps ~2N noise vectors, finds for each GLO code its nearest mapped noise (exact L2,
  :func:`nearest_indices`, in chunks on the device instead of faiss ``IndexFlatL2``), and regresses
  T(e_nn(i)) onto z_i with MSE.
- ``gmm``: a full-covariance Gaussian mixture fitted with scikit-learn (GLANN-VIDEO: 100 components,
  ``max_iter=100``, ``n_init=10``); only its parameters are kept, sampling is plain torch.
- ``vae``: GLANN-VIDEO's small VAE on the codes (100 -> 512 -> 512 -> 16 and back, decoder output on the
  sphere, loss sum-MSE + 0.01 KL).
- ``gaussian``: one full-covariance Gaussian of the codes (GLANN's ``sample_gaussian`` baseline).

Every ``sample`` returns codes on the unit sphere (the generator normalises its input anyway). Optimiser
settings are the references': Adam lr 1e-3, betas (0.5, 0.999), batch 128, lr x0.5 every 50 epochs, and the
optimiser is re-created every epoch as there. Mappings are ``nn.Module``s holding only tensors, so
:func:`save_mapping` / :func:`load_mapping` round-trip through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datagen.store.atomic import atomic_path

Logger = Callable[[str], None]


def _sphere(z: torch.Tensor) -> torch.Tensor:
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_indices(
    queries: torch.Tensor, candidates: torch.Tensor, *, query_chunk: int = 4096, candidate_chunk: int = 16384
) -> torch.Tensor:
    """For each query row, the index of its nearest candidate row in L2 (ties: the lowest index).

    Exact search like faiss ``IndexFlatL2``, run wherever the tensors live; the distance matrix is only ever
    materialised ``query_chunk x candidate_chunk`` at a time (256 MB by default), so 50,000 codes against
    100,000 candidates fit on a CPU as on a GPU.
    """
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"need (Q, D) and (C, D), got {tuple(queries.shape)} and {tuple(candidates.shape)}")
    if candidates.shape[0] == 0:
        raise ValueError("no candidates to search")
    out = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    for qs in range(0, queries.shape[0], query_chunk):
        q = queries[qs : qs + query_chunk]
        best_d = torch.full((q.shape[0],), math.inf, device=q.device, dtype=q.dtype)
        best_i = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        for cs in range(0, candidates.shape[0], candidate_chunk):
            d = torch.cdist(q, candidates[cs : cs + candidate_chunk])  # (q, c)
            dmin, imin = d.min(dim=1)
            better = dmin < best_d  # strict: an earlier chunk wins ties
            best_d = torch.where(better, dmin, best_d)
            best_i = torch.where(better, imin + cs, best_i)
        out[qs : qs + q.shape[0]] = best_i
    return out


def _report_epoch(epoch: int, epochs: int, lines: int = 20) -> bool:
    """Whether to log this epoch: about ``lines`` evenly spaced epochs and the last (the history has all)."""
    return epoch % max(1, epochs // lines) == 0 or epoch == epochs - 1


def _step_lr(base: float, epoch: int, decay_epochs: int, decay_rate: float) -> float:
    return base * decay_rate ** (epoch // decay_epochs)


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """A fresh permutation cut into full batches (the references drop the ragged tail); one if n < size."""
    bs = min(batch_size, n)
    perm = torch.randperm(n, generator=generator, device="cpu").to(device)
    return [perm[i * bs : (i + 1) * bs] for i in range(n // bs)]


class IMLEMapping(nn.Module):
    """GLANN's ``_netT``: e -> Linear 128 + BN + ReLU -> Linear 128 + BN + ReLU -> Linear nz (no biases)."""

    name = "imle"

    def __init__(self, nz: int = 100, *, noise_dim: int = 16, hidden: int = 128) -> None:
        super().__init__()
        self.nz, self.noise_dim, self.hidden = nz, noise_dim, hidden
        self.net = nn.Sequential(
            nn.Linear(noise_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, nz, bias=False),
        )

    def config(self) -> dict[str, Any]:
        return {"nz": self.nz, "noise_dim": self.noise_dim, "hidden": self.hidden}

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e)

    @torch.no_grad()
    def match(self, latents: torch.Tensor, e: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """Index into ``e`` of the mapped noise T(e) nearest to each code (the IMLE assignment step).

        T runs batch by batch in its current mode, as the reference does (BatchNorm in training mode).
        """
        te = torch.cat([self(e[i : i + batch_size]) for i in range(0, e.shape[0], batch_size)])
        return nearest_indices(latents, te)

    def fit(
        self,
        latents: torch.Tensor,
        *,
        seed: int = 0,
        epochs: int = 50,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        decay_epochs: int = 50,
        decay_rate: float = 0.5,
        noise_factor: int = 2,
        log: Logger | None = None,
    ) -> list[float]:
        """Train on ``latents`` (N, nz) on their device; returns the mean MSE of each epoch."""
        device = latents.device
        self.to(device)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        n = latents.shape[0]
        bs = min(batch_size, n)
        history = []
        for epoch in range(epochs):
            opt = torch.optim.Adam(
                self.parameters(),
                lr=_step_lr(lr, epoch, decay_epochs, decay_rate),
                betas=(0.5, 0.999),
                weight_decay=weight_decay,
            )
            self.train()
            # Map noise_factor * N noise vectors, batch by batch as the reference does (BN in training mode).
            n_noise = noise_factor * (n // bs) * bs
            e = torch.randn(n_noise, self.noise_dim, generator=gen).to(device)
            nn_index = self.match(latents, e, bs)  # (N,): the mapped noise each code claims
            total = 0.0
            batches = _batches(n, bs, gen, device)
            for idx in batches:
                opt.zero_grad(set_to_none=True)
                loss = F.mse_loss(self(e[nn_index[idx]]), latents[idx])
                loss.backward()
                opt.step()
                total += loss.item()
            history.append(total / len(batches))
            if log and _report_epoch(epoch, epochs):
                log(f"imle epoch {epoch}: mse {history[-1]:.6f}")
        return history

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """``n`` new codes T(e), e ~ N(0, I) drawn from ``generator`` (on the mapping's device)."""
        self.eval()
        dev = next(self.parameters()).device
        e = torch.randn(n, self.noise_dim, generator=generator, device=generator.device).to(dev)
        return _sphere(self(e))


class GaussianMixtureMapping(nn.Module):
    """Full-covariance Gaussian mixture over the codes; fitted by scikit-learn, sampled in torch."""

    name = "gmm"
    weights: torch.Tensor
    means: torch.Tensor
    chol: torch.Tensor

    def __init__(self, nz: int = 100, *, n_components: int = 100) -> None:
        super().__init__()
        self.nz, self.n_components = nz, n_components
        self.register_buffer("weights", torch.full((n_components,), 1.0 / n_components))
        self.register_buffer("means", torch.zeros(n_components, nz))
        self.register_buffer("chol", torch.eye(nz).repeat(n_components, 1, 1))

    def config(self) -> dict[str, Any]:
        return {"nz": self.nz, "n_components": self.n_components}

    def fit(
        self,
        latents: torch.Tensor,
        *,
        seed: int = 0,
        max_iter: int = 100,
        n_init: int = 10,
        log: Logger | None = None,
    ) -> list[float]:
        """``sklearn.mixture.GaussianMixture(full covariance)`` on the codes; returns [mean log-likelihood].

        Uses at most one component per code, so tiny tables still fit.
        """
        from sklearn.mixture import GaussianMixture  # optional dependency, needed only here

        x = latents.detach().cpu().double().numpy()
        k = min(self.n_components, x.shape[0])
        gmm = GaussianMixture(k, covariance_type="full", max_iter=max_iter, n_init=n_init, random_state=seed)
        gmm.fit(x)
        if k != self.n_components:
            self.n_components = k
        dev = latents.device
        self.weights = torch.as_tensor(gmm.weights_, dtype=torch.float32, device=dev)
        self.means = torch.as_tensor(gmm.means_, dtype=torch.float32, device=dev)
        chol = np.linalg.cholesky(gmm.covariances_)  # (k, nz, nz), lower
        self.chol = torch.as_tensor(chol, dtype=torch.float32, device=dev)
        score = float(gmm.score(x))
        if log:
            log(f"gmm: {k} components, converged={gmm.converged_}, mean log-likelihood {score:.3f}")
        return [score]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # A fitted mixture may have fewer components than configured: take the saved shapes.
        for name in ("weights", "means", "chol"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        self.n_components = self.weights.shape[0]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        dev = generator.device
        comp = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.nz, 1, generator=generator, device=dev)
        comp = comp.to(self.means.device)
        z = self.means[comp] + (self.chol[comp] @ eps.to(self.means.device)).squeeze(-1)
        return _sphere(z)


class GaussianMapping(GaussianMixtureMapping):
    """One full-covariance Gaussian (GLANN's ``sample_gaussian`` baseline): a one-component mixture."""

    name = "gaussian"

    def __init__(self, nz: int = 100) -> None:
        super().__init__(nz, n_components=1)

    def config(self) -> dict[str, Any]:
        return {"nz": self.nz}

    def fit(
        self, latents: torch.Tensor, *, seed: int = 0, log: Logger | None = None, **_: Any
    ) -> list[float]:
        x = latents.detach().double()
        mean = x.mean(0)
        cov = torch.cov(x.T) + 1e-6 * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        self.weights = torch.ones(1, device=latents.device)
        self.means = mean[None].float()
        self.chol = torch.linalg.cholesky(cov)[None].float()
        if log:
            log(f"gaussian: fitted on {x.shape[0]} codes")
        return []


class VAEMapping(nn.Module):
    """GLANN-VIDEO's ``_netVAE``: nz -> 512 -> 512 -> (mu, logvar) of ``latent_dim``, back to nz."""

    name = "vae"

    def __init__(
        self, nz: int = 100, *, latent_dim: int = 16, hidden: int = 512, kl_weight: float = 0.01
    ) -> None:
        super().__init__()
        self.nz, self.latent_dim, self.hidden, self.kl_weight = nz, latent_dim, hidden, kl_weight
        self.encoder = nn.Sequential(nn.Linear(nz, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.to_mu = nn.Linear(hidden, latent_dim)
        self.to_logvar = nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, nz),
        )

    def config(self) -> dict[str, Any]:
        return {
            "nz": self.nz,
            "latent_dim": self.latent_dim,
            "hidden": self.hidden,
            "kl_weight": self.kl_weight,
        }

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        return _sphere(self.decoder(u))

    def loss(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Reference loss: summed squared error + kl_weight * KL(q(u|z) || N(0, I)), with noise ``eps``."""
        h = self.encoder(z)
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        recon = self.decode(mu + eps * torch.exp(0.5 * logvar))
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return F.mse_loss(recon, z, reduction="sum") + self.kl_weight * kl

    def fit(
        self,
        latents: torch.Tensor,
        *,
        seed: int = 0,
        epochs: int = 200,
        batch_size: int = 128,
        lr: float = 1e-3,
        decay_epochs: int = 50,
        decay_rate: float = 0.5,
        log: Logger | None = None,
    ) -> list[float]:
        device = latents.device
        self.to(device)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        history = []
        for epoch in range(epochs):
            opt = torch.optim.Adam(
                self.parameters(), lr=_step_lr(lr, epoch, decay_epochs, decay_rate), betas=(0.5, 0.999)
            )
            self.train()
            total = 0.0
            batches = _batches(latents.shape[0], batch_size, gen, device)
            for idx in batches:
                opt.zero_grad(set_to_none=True)
                eps = torch.randn(len(idx), self.latent_dim, generator=gen).to(device)
                loss = self.loss(latents[idx], eps)
                loss.backward()
                opt.step()
                total += loss.item()
            history.append(total / len(batches))
            if log and _report_epoch(epoch, epochs):
                log(f"vae epoch {epoch}: loss {history[-1]:.6f}")
        return history

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        self.eval()
        dev = next(self.parameters()).device
        u = torch.randn(n, self.latent_dim, generator=generator, device=generator.device).to(dev)
        return self.decode(u)


MAPPINGS: dict[str, type[nn.Module]] = {
    "imle": IMLEMapping,
    "gmm": GaussianMixtureMapping,
    "vae": VAEMapping,
    "gaussian": GaussianMapping,
}


def make_mapping(name: str, nz: int, **config: Any) -> nn.Module:
    """Build a mapping by name (``imle``, ``gmm``, ``vae``, ``gaussian``) with its constructor options."""
    if name not in MAPPINGS:
        raise ValueError(f"unknown latent mapping {name!r}; choose one of {sorted(MAPPINGS)}")
    return MAPPINGS[name](nz, **config)


def save_mapping(mapping: nn.Module, path: str | os.PathLike) -> None:
    """Tensors and primitive config only (loadable with ``weights_only=True``); temp file then rename."""
    path = Path(path)
    cfg = dict(mapping.config())  # type: ignore[operator]
    nz = cfg.pop("nz")
    payload = {"name": mapping.name, "nz": nz, "config": cfg, "state": mapping.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_mapping(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> nn.Module:
    payload = torch.load(path, map_location=map_location, weights_only=True)
    mapping = make_mapping(payload["name"], payload["nz"], **payload["config"])
    mapping.load_state_dict(payload["state"])
    return mapping.to(map_location)
