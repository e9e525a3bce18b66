"""Samplers checked against a data distribution whose exact denoiser is known.

For x0 ~ N(mu, s^2) per pixel, E[x0 | x0 + sigma eps = x] = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and
the probability-flow ODE maps x_T to mu + (x_T - mu) s / sqrt(s^2 + sigma_T^2) exactly.
"""

import pytest
import torch

from napari_emdiffuse.config import DiffusionConfig
from napari_emdiffuse.engine.diffusion import Schedule
from napari_emdiffuse.engine.samplers import SAMPLERS, get_sampler

MU, S = 0.3, 0.5


def oracle(x, sigma):
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


@pytest.mark.parametrize("name,steps,spacing", [("ddim", 200, "karras"), ("dpmpp_2m", 50, "karras"), ("ddpm", 1000, "uniform")])
def test_samplers_reach_the_data_distribution(name, steps, spacing):
    sigmas = Schedule.from_config(DiffusionConfig()).sampling_sigmas(steps, spacing)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 100, 200, generator=g) * sigmas[0]
    out = get_sampler(name)(oracle, x, sigmas, noise=lambda i, like: torch.randn(like.shape, generator=g))
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.std().item() - S) < 0.02


def _ode_error(name, steps):
    """Largest deviation from the exact probability-flow ODE solution."""
    sched = Schedule.from_config(DiffusionConfig())
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    sigmas = sched.sampling_sigmas(steps)
    xt = x * sigmas[0]
    exact = MU + (xt - MU) * S / (S**2 + sigmas[0] ** 2).sqrt()
    return (SAMPLERS[name](oracle, xt, sigmas) - exact).abs().max().item()


def test_deterministic_samplers_converge_to_the_ode_solution():
    assert _ode_error("dpmpp_2m", 200) < 0.005
    assert _ode_error("ddim", 1000) < 0.02
    # second order: DPM-Solver++(2M) beats DDIM (first order) at the same number of evaluations
    for steps in (20, 50):
        assert _ode_error("dpmpp_2m", steps) < _ode_error("ddim", steps) / 2


def test_callback_sees_every_step_and_can_cancel():
    sigmas = Schedule.from_config(DiffusionConfig()).sampling_sigmas(6)
    seen = []

    def cb(step):
        seen.append(step.i)
        assert step.x.shape == step.x0.shape == (1, 1, 4, 4)
        if step.i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SAMPLERS["dpmpp_2m"](oracle, torch.zeros(1, 1, 4, 4), sigmas, callback=cb)
    assert seen == [0, 1, 2]


def test_unknown_sampler():
    with pytest.raises(ValueError, match="dpmpp_2m"):
        get_sampler("euler")


def test_a_sampler_declares_its_own_options():
    """Only DDIM takes ``eta`` (get_sampler binds it); DDPM is DDIM at eta 1, and no other sampler
    accepts an option it would ignore."""
    import inspect

    sigmas = Schedule.from_config(DiffusionConfig()).sampling_sigmas(5)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]

    def noise(i, like):
        return torch.randn(like.shape, generator=torch.Generator().manual_seed(10 + i))

    assert torch.equal(get_sampler("ddim", 1.0)(oracle, x, sigmas, noise=noise), get_sampler("ddpm")(oracle, x, sigmas, noise=noise))
    assert not torch.equal(get_sampler("ddim", 0.0)(oracle, x, sigmas, noise=noise), get_sampler("ddim", 1.0)(oracle, x, sigmas, noise=noise))
    assert [n for n, f in SAMPLERS.items() if "eta" in inspect.signature(f).parameters] == ["ddim"]
    assert get_sampler("dpmpp_2m", 0.7) is SAMPLERS["dpmpp_2m"]
