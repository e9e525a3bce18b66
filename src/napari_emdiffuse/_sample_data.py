"""Sample data (File > Open Sample): a small crop of real ssTEM, clean and with simulated noise.

The clean crop ships in ``sample_data/`` with its provenance; the noisy one is computed from it
at the project's standard low-dose level, so a new user can try denoising, fine-tuning and the
Compare widget's metrics (against the clean crop) without any data of their own.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE = "isbi2012_sstem_crop.tif"
CITATION = "ISBI 2012 ssTEM, Drosophila L1 VNC (Cardona et al. 2010, PLoS Biol 8:e1000502)"


def sample_path() -> Path:
    return Path(str(resources.files("napari_emdiffuse") / "sample_data" / SAMPLE))


def _clean() -> tuple[np.ndarray, dict[str, Any]]:
    from ._reader import read_paths

    [(data, kwargs, _)] = read_paths(str(sample_path()))
    kwargs["metadata"] = {"citation": CITATION, "source": SAMPLE}
    return np.asarray(data), kwargs


def sstem_clean() -> list[tuple[Any, dict[str, Any], str]]:
    """6 x 256 x 256 ssTEM crop, 50 x 4 x 4 nm voxels."""
    data, kwargs = _clean()
    kwargs["name"] = "ssTEM clean"
    return [(data, kwargs, "image")]


def sstem_noisy() -> list[tuple[Any, dict[str, Any], str]]:
    """The same crop with simulated low-dose noise (Poisson at 20 counts + 3 % read noise), in the
    clean crop's grey values so the two can be compared directly."""
    from .data.degrade import DEFAULT_DOSE, DEFAULT_READ_NOISE, poisson_gaussian
    from .data.normalise import fit_normaliser

    data, kwargs = _clean()
    grey = fit_normaliser(data)
    noisy = grey.from_unit(poisson_gaussian(grey.to_unit(data), DEFAULT_DOSE, DEFAULT_READ_NOISE, seed=0))
    kwargs["name"] = "ssTEM noisy (simulated)"
    kwargs["metadata"] = {**kwargs["metadata"], "simulated": f"Poisson-Gaussian, dose {DEFAULT_DOSE}, read noise {DEFAULT_READ_NOISE}"}
    return [(noisy.astype(np.float32), kwargs, "image")]
