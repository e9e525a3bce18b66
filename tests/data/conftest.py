"""Fixtures for the data tests: real EM slices from ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def isbi_slice(isbi_path) -> np.ndarray:
    """One clean 512 x 512 ssTEM slice in [0, 1]."""
    import tifffile

    return tifffile.imread(isbi_path, key=5).astype(np.float32) / 255


@pytest.fixture(scope="session")
def fibsem_crop(fibsem_path) -> np.ndarray:
    """16 consecutive FIB-SEM slices, 256 x 256 px, uint8."""
    import tifffile

    return tifffile.imread(fibsem_path, key=range(40, 56))[:, 128:384, 128:384].copy()
