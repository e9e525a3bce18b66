import torch

from napari_emdiffuse.config import DiffusionConfig
from napari_emdiffuse.engine.diffusion import Denoiser, DiffusionProcess, Schedule


def test_schedule_matches_emdiffuse():
    s = Schedule.from_config(DiffusionConfig())
    assert s.timesteps == 2000
    sig = s.sigmas
    assert torch.all(sig[1:] > sig[:-1])
    assert abs(s.sigma_min - (1e-6 / (1 - 1e-6)) ** 0.5) < 1e-6
    assert 50 < s.sigma_max < 500  # abar_T about 5e-5


def test_sampling_sigmas():
    s = Schedule.from_config(DiffusionConfig())
    sig = s.sampling_sigmas(10)
    assert len(sig) == 11 and sig[-1] == 0 and torch.all(sig[:-1] > sig[1:])
    assert torch.isclose(sig[0], s.sigmas[-1].float())
    assert len(s.sampling_sigmas(5000, "uniform")) == 2001  # capped at the schedule length


class _Oracle(torch.nn.Module):
    """A network that returns the true target for a known x0 (and knows the noise level)."""

    def __init__(self, x0, prediction):
        super().__init__()
        self.x0, self.prediction = x0, prediction

    def forward(self, x_t, cond, c_noise):
        sigma = torch.exp(c_noise * 4)[:, None, None, None]
        sqrt_ab = (1 + sigma**2).rsqrt()
        sqrt_1mab = sigma * sqrt_ab
        eps = (x_t - sqrt_ab * self.x0) / sqrt_1mab
        return sqrt_ab * eps - sqrt_1mab * self.x0 if self.prediction == "v" else eps


def test_denoiser_inverts_the_parameterisation():
    torch.manual_seed(0)
    x0 = torch.randn(2, 1, 8, 8)
    for prediction in ("v", "eps"):
        den = Denoiser(_Oracle(x0, prediction), prediction)
        for sigma in (0.01, 1.0, 100.0):
            x = x0 + sigma * torch.randn_like(x0)
            out = den(x, torch.tensor(sigma), torch.zeros(2, 1, 8, 8))
            assert torch.allclose(out, x0, atol=1e-3 * max(1.0, sigma)), (prediction, sigma)


def test_loss_is_zero_for_the_oracle_and_positive_otherwise():
    proc = DiffusionProcess(DiffusionConfig())
    torch.manual_seed(0)
    x0 = torch.randn(4, 1, 8, 8)
    zero = torch.nn.Module()
    zero.forward = lambda x_t, cond, c: torch.zeros_like(x_t)
    gen = torch.Generator().manual_seed(1)
    assert proc.loss(zero, x0, x0, generator=gen) > 0.1

    class Oracle(torch.nn.Module):
        def forward(self, x_t, cond, c_noise):
            sigma = torch.exp(c_noise * 4)[:, None, None, None]
            sqrt_ab = (1 + sigma**2).rsqrt()
            sqrt_1mab = sigma * sqrt_ab
            eps = (x_t - sqrt_ab * x0) / sqrt_1mab
            return sqrt_ab * eps - sqrt_1mab * x0

    assert proc.loss(Oracle(), x0, x0, generator=torch.Generator().manual_seed(1)) < 1e-6
