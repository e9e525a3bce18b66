"""The diffusion process, apart from the network and the samplers.

EMDiffuse trains on a 2000-step linear beta schedule (Ho et al. 2020, eq. 4). We keep that
schedule but express it, as k-diffusion does, by its noise levels ``sigma_t = sqrt((1 - abar_t) /
abar_t)`` so that every sampler works on ``x = x0 + sigma * eps`` and asks the model for one thing:
a denoised estimate ``D(x; sigma) ~ E[x0 | x]``.

Three parameterisations of what the network outputs (``DiffusionConfig.prediction``):

- ``"edm"`` (the default for new models): the preconditioning of Karras et al. 2022 (sec. 5,
  table 1), ``D(x) = c_skip x + c_out F(c_in x)`` with ``sigma_data`` the spread of the target.
  Every variant's target is its difference from a baseline (the noisy input, bicubic, linear
  interpolation) and the network's last layer starts at zero, so an untrained model's best
  estimate *is* the baseline: training can only improve on it. The loss weights the noise levels
  so that the network's own target has unit variance at every level (the EDM weighting).
- ``"v"``: ``v = sqrt(abar) * eps - sqrt(1 - abar) * x0`` (Salimans & Ho 2022, sec. 4); the
  bundled models before the EDM parameterisation.
- ``"eps"``: the paper's parameterisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..config import DiffusionConfig


@dataclass(frozen=True)
class Schedule:
    """The discrete schedule as noise levels; ``sigmas[t]`` increases with ``t``."""

    alphas_cumprod: torch.Tensor  # float64, shape (T,)

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "Schedule":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.timesteps, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @property
    def sigmas(self) -> torch.Tensor:
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    @property
    def timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sampling_sigmas(self, steps: int, spacing: str = "karras", rho: float = 7.0) -> torch.Tensor:
        """``steps + 1`` decreasing noise levels from ``sigma_max`` ending in 0.

        ``"uniform"`` spaces them evenly in ``t`` (DDPM/DDIM; 1000 steps is the EMDiffuse reference);
        ``"karras"`` evenly in ``sigma^(1/rho)`` (Karras et al. 2022, eq. 5), which spends the few steps
        of a fast sampler where the image forms and keeps consecutive log-steps comparable, as
        second-order multistep solvers need.
        """
        if steps < 1:
            raise ValueError("steps must be at least 1")
        if spacing == "uniform":
            steps = min(steps, self.timesteps)
            t = torch.linspace(self.timesteps - 1, 0, steps, dtype=torch.float64).round().long()
            sig = self.sigmas[t]
        elif spacing == "emdiffuse-test":
            sig = emdiffuse_test_sigmas(steps)
        elif spacing == "karras":
            ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
            lo, hi = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
            sig = (hi + ramp * (lo - hi)) ** rho
        else:
            raise ValueError(f"unknown spacing {spacing!r}; use 'karras', 'uniform' or 'emdiffuse-test'")
        return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).float()


#: the original EMDiffuse's test-time schedule (its configs' ``beta_schedule.test``): linear beta
#: from 1e-4 to 0.09 over 1000 steps, for its 1000-step ancestral sampling
EMDIFFUSE_TEST_SCHEDULE = (1e-4, 0.09, 1000)


def emdiffuse_test_sigmas(steps: int) -> torch.Tensor:
    """``steps`` decreasing noise levels of the original's test schedule, evenly spaced in its t
    (all 1000 at ``steps >= 1000``); its first level (sigma ~ 6e9) is pure noise."""
    lo, hi, n = EMDIFFUSE_TEST_SCHEDULE
    abar = torch.cumprod(1.0 - torch.linspace(lo, hi, n, dtype=torch.float64), dim=0)
    t = torch.linspace(n - 1, 0, min(steps, n), dtype=torch.float64).round().long()
    return ((1 - abar) / abar).sqrt()[t]


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """Network input encoding the noise level (continuous, so any sigma can be sampled)."""
    return sigma.clamp_min(1e-8).log() / 4


EDM_DEFAULT_SIGMA_DATA = 0.5  # Karras et al. 2022, sec. 5; training replaces it by the measured spread


def scalings(prediction: str, sigma: torch.Tensor, sigma_data: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``c_skip, c_out, c_in`` with ``D(x) = c_skip x + c_out F(c_in x)`` for ``x = x0 + sigma * eps``:
    the one statement of each parameterisation, used by the forward (:class:`Denoiser`) and the
    loss (whose target is ``(x0 - c_skip x) / c_out``), as k-diffusion's ``get_scalings``.

    ``"edm"``: Karras et al. 2022, table 1, with the target's spread ``sigma_data``. ``"v"`` and
    ``"eps"`` see the VP ``x_t = x / sqrt(1 + sigma^2)``; ``v`` is the EDM form with unit spread
    (``x0 = sqrt(abar) x_t - sqrt(1 - abar) v``), ``eps`` gives ``x0 = x - sigma eps``.
    """
    if prediction == "edm":
        sd = sigma_data or EDM_DEFAULT_SIGMA_DATA
        var = sigma**2 + sd**2
        return sd**2 / var, sigma * sd * var.rsqrt(), var.rsqrt()
    c_in = (1 + sigma**2).rsqrt()  # sqrt(abar)
    if prediction == "v":
        return c_in**2, -sigma * c_in, c_in
    if prediction == "eps":
        return torch.ones_like(sigma), -sigma, c_in
    raise ValueError(f"unknown prediction {prediction!r}; use 'edm', 'v' or 'eps'")


class Denoiser(nn.Module):
    """Wraps a network as a denoiser ``D(x; sigma, cond) -> x0``.

    ``x`` is in the variance-exploding form ``x0 + sigma * eps``. For ``"v"`` and ``"eps"`` the
    network sees ``x / sqrt(1 + sigma^2)`` (the VP ``x_t``), for ``"edm"`` ``c_in x``: exactly
    the scaling used in training.
    """

    def __init__(self, network: nn.Module, prediction: str = "v", sigma_data: float | None = None) -> None:
        super().__init__()
        self.network = network
        self.prediction = prediction
        # a model that has not trained yet has no measured spread: Karras et al.'s default
        self.sigma_data = sigma_data or EDM_DEFAULT_SIGMA_DATA

    @classmethod
    def from_config(cls, network: nn.Module, cfg: DiffusionConfig) -> "Denoiser":
        return cls(network, cfg.prediction, cfg.sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(torch.float32).reshape(-1)
        level = c_noise(sigma)  # one for the whole batch at a sampler step: the network folds its FiLM
        sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in = scalings(self.prediction, sigma[:, None, None, None], self.sigma_data)
        out = self.network((x * c_in).to(cond.dtype), cond, level).float()
        return c_skip * x + c_out * out


class DiffusionProcess:
    """Forward noising and the training loss."""

    def __init__(self, cfg: DiffusionConfig) -> None:
        self.cfg = cfg
        self.schedule = Schedule.from_config(cfg)
        self._abar = self.schedule.alphas_cumprod.float()

    def loss(
        self, network: nn.Module, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean squared error on the network's target at uniformly drawn timesteps."""
        b = x0.shape[0]
        t = torch.randint(0, self.schedule.timesteps, (b,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        abar = self._abar.to(x0.device)[t][:, None, None, None]
        sigma = ((1 - abar) / abar).sqrt()
        c_skip, c_out, c_in = scalings(self.cfg.prediction, sigma, self.cfg.sigma_data)
        x = x0 + sigma * noise
        pred = network(c_in * x, cond, c_noise(sigma.reshape(b)))
        return F.mse_loss(pred.float(), (x0 - c_skip * x) / c_out)
