"""Helpers for the variant tests: an "oracle" network whose denoised estimate is a known function
of the condition, so that whole-volume prediction can be checked exactly, and tiny real data."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from napari_emdiffuse.config import load_preset
from napari_emdiffuse.model_file import Model, ModelInfo


class Oracle(nn.Module):
    """Returns the v-prediction that makes the denoiser's estimate equal ``answer(cond, x)`` at
    every noise level, where ``x = x0 + sigma * eps`` is the noisy sample: prediction then yields
    exactly ``answer`` of the condition the variant built (plus whatever the answer takes from
    the noise), which exposes any misplaced row, slice or channel."""

    size_multiple = 4

    def __init__(self, answer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.answer = answer
        self.dummy = nn.Parameter(torch.zeros(1))  # something for .to(device) to move

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = torch.exp(4 * c_noise.double())[:, None, None, None]  # inverse of diffusion.c_noise
        sqrt_ab = (1 + sigma**2).rsqrt()
        y = self.answer(cond.double(), x_t.double() / sqrt_ab)
        return ((sqrt_ab * x_t.double() - y) / (sigma * sqrt_ab)).float()


@pytest.fixture(scope="session")
def oracle_model() -> Callable[..., Model]:
    """``oracle_model(preset, options, answer, out_channels, cond_channels)``: a :class:`Model`
    around an :class:`Oracle`, with small tiles so that every test plane spans several."""

    def make(preset: str, options: dict, answer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], out_c: int, cond_c: int) -> Model:
        over = {"variant_options": options, "diffusion": {"prediction": "v"}, "sample": {"tile_size": 32, "overlap": 8, "samples": 2, "steps": 3}}
        p = load_preset(preset, over)  # the oracle answers in the v form
        return Model(p, ModelInfo(out_channels=out_c, cond_channels=cond_c), network=Oracle(answer))

    return make


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread while these tests run: on a small machine shared with other jobs, two
    threads contending for two busy cores made tiny-model training several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fib_small(fibsem_path) -> np.ndarray:
    """An isotropic FIB-SEM block, 33 x 80 x 80 voxels (5 nm), uint8."""
    import tifffile

    return tifffile.imread(fibsem_path, key=range(40, 73))[:, 200:280, 200:280]


@pytest.fixture(scope="session")
def sstem_small(isbi_path) -> np.ndarray:
    """An anisotropic ssTEM block, 6 x 96 x 96 voxels (4 x 4 x 50 nm), uint8."""
    import tifffile

    return tifffile.imread(isbi_path, key=range(6))[:, 100:196, 100:196]
