"""Shared fixtures: the real EM from ../shared/data, and a tiny model trained on it in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
ISBI = SHARED_DATA / "isbi2012_sstem_train.tif"
FIBSEM = SHARED_DATA / "epfl_fibsem_train_crop.tif"


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real EM test data not found at {path} (see ../shared/data/PROVENANCE.md)")
    return path


@pytest.fixture(scope="session")
def isbi_path() -> Path:
    return _require(ISBI)


@pytest.fixture(scope="session")
def fibsem_path() -> Path:
    return _require(FIBSEM)


@pytest.fixture(scope="session")
def isbi_clean(isbi_path) -> np.ndarray:
    """Four slices of the ssTEM stack scaled to [0, 1]."""
    import tifffile

    from napari_emdiffuse.data.degrade import to_unit

    return to_unit(tifffile.imread(isbi_path, key=range(4)))


@pytest.fixture(scope="session")
def isbi_pair(isbi_clean) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) at the standard noise level: Poisson peak 20 counts, read noise 0.03."""
    from napari_emdiffuse.data.degrade import poisson_gaussian

    return poisson_gaussian(isbi_clean, 20, 0.03, seed=1), isbi_clean


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, isbi_pair) -> Path:
    """A tiny denoiser trained for 60 steps: enough for shapes, tiling and plumbing, not quality."""
    from napari_emdiffuse.config import load_preset
    from napari_emdiffuse.jobs.train import train

    noisy, clean = isbi_pair
    out = tmp_path_factory.mktemp("tiny_model")
    preset = load_preset("tiny", {"train": {"iterations": 60, "val_every": 60, "checkpoint_every": 60}})
    for _ in train(preset, {"input": noisy, "target": clean}, out, device="cpu"):
        pass
    return out


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from napari_emdiffuse.model_file import Model

    return Model.load(tiny_model_dir)
