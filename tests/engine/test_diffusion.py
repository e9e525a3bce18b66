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
    proc = DiffusionProcess(DiffusionConfig(prediction="v"))
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


class _EdmOracle(torch.nn.Module):
    """The EDM network output that makes the denoiser return ``x0``: ``(x0 - c_skip x) / c_out``."""

    def __init__(self, x0, sigma_data):
        super().__init__()
        self.x0, self.sd = x0, sigma_data

    def forward(self, x_in, cond, c_noise):
        from napari_emdiffuse.engine.diffusion import scalings

        sigma = torch.exp(c_noise * 4)[:, None, None, None]
        c_skip, c_out, c_in = scalings("edm", sigma, self.sd)
        return (self.x0 - c_skip * x_in / c_in) / c_out


def test_edm_denoiser_and_loss_invert_the_preconditioning():
    torch.manual_seed(0)
    x0 = 0.3 * torch.randn(2, 1, 8, 8)
    den = Denoiser(_EdmOracle(x0, 0.3), "edm", 0.3)
    for sigma in (0.01, 1.0, 100.0):
        out = den(x0 + sigma * torch.randn_like(x0), torch.tensor(sigma), torch.zeros_like(x0))
        assert torch.allclose(out, x0, atol=1e-4 * max(1.0, sigma)), sigma
    proc = DiffusionProcess(DiffusionConfig(prediction="edm", sigma_data=0.3))
    assert proc.loss(_EdmOracle(x0, 0.3), x0, x0, generator=torch.Generator().manual_seed(1)) < 1e-6
    zero = torch.nn.Module()
    zero.forward = lambda x, cond, c: torch.zeros_like(x)
    # the untrained network's loss is about 1 at every noise level: the EDM weighting
    assert 0.3 < float(proc.loss(zero, x0, x0, generator=torch.Generator().manual_seed(1))) < 3


def test_an_untrained_edm_model_uses_the_default_spread():
    """Models built but never trained (tests, a fresh preset in the widget) still run."""
    from napari_emdiffuse.engine.diffusion import EDM_DEFAULT_SIGMA_DATA

    assert Denoiser(torch.nn.Identity(), "edm", None).sigma_data == EDM_DEFAULT_SIGMA_DATA
    assert Denoiser(torch.nn.Identity(), "edm", 0.3).sigma_data == 0.3
