"""Helpers for the block-wise prediction tests: untrained tiny models (deterministic and quick,
all that bit-identity and bookkeeping need) and a store's results as numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile
import torch

from napari_emdiffuse.config import SampleConfig, load_preset
from napari_emdiffuse.model_file import Model, ModelInfo, build_network
from napari_emdiffuse.variants import get_variant


@pytest.fixture(scope="session")
def fast() -> SampleConfig:
    return SampleConfig(sampler="dpmpp_2m", steps=2, samples=2, tile_size=32, overlap=8, tile_batch=4, seed=5)


@pytest.fixture(scope="session")
def random_model(fast) -> Callable[..., Model]:
    """``random_model(preset, options)``: an untrained network of that preset."""

    def make(preset: str, options: dict | None = None) -> Model:
        p = load_preset(preset, {"variant_options": options or {}, "sample": fast.model_dump()})
        v = get_variant(p.variant)
        oc, cc = v.channels(v.options(p.variant_options))
        torch.manual_seed(0)
        return Model(p, ModelInfo(out_channels=oc, cond_channels=cc), network=build_network(p.network, oc, cc))

    return make


@pytest.fixture(scope="session")
def store_results() -> Callable[[Path], dict[str, np.ndarray]]:
    """The images of a prediction store (``mean``, ``uncertainty``, ``samples``) as numpy."""
    import zarr

    def read(path: Path) -> dict[str, np.ndarray]:
        group = zarr.open_group(str(path), mode="r")
        return {name: np.asarray(group[f"{name}/0"]) for name in ("mean", "uncertainty", "samples") if name in group}

    return read


@pytest.fixture(scope="session")
def small_stack(isbi_path) -> np.ndarray:
    """Four ssTEM slices of 48 x 56 px: several blocks, each several tiles."""
    return tifffile.imread(isbi_path, key=range(4))[:, 100:148, 100:156]
