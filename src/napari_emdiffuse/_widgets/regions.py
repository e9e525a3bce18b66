"""Regions where the model is unsure: the uncertainty map smoothed to the scale of structures,
thresholded, and cleared of specks (no Qt here).

A per-pixel standard deviation of a few samples is itself noisy: thresholding it marks scattered
pixels. Averaging it over a few pixels first (a Gaussian of ``SIGMA`` px, plane by plane) and
dropping regions smaller than ``MIN_AREA`` px leaves the areas a user should look at again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .layers import sample_percentile

#: Gaussian smoothing of the uncertainty map, in pixels (per plane).
SIGMA = 3.0
#: Regions smaller than this many pixels (per plane) are dropped as specks.
MIN_AREA = 64
#: The default threshold: this percentile of the smoothed map, so about 5 % is marked.
PERCENTILE = 95.0


def smoothed(std: Any) -> Any:
    """The map averaged over about ``SIGMA`` pixels in y and x (lazily for dask arrays)."""
    from scipy.ndimage import gaussian_filter

    sigma = (0.0,) * (std.ndim - 2) + (SIGMA, SIGMA)
    if isinstance(std, np.ndarray):
        return gaussian_filter(std.astype(np.float32), sigma, mode="nearest")
    import dask.array as da

    depth = (0,) * (std.ndim - 2) + (int(4 * SIGMA),) * 2
    return da.map_overlap(
        lambda b: gaussian_filter(b.astype(np.float32), sigma, mode="nearest"), da.asarray(std), depth=depth, boundary="nearest", dtype=np.float32
    )


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import label

    planes = mask.reshape((-1, *mask.shape[-2:]))
    out = np.zeros_like(planes)
    for i, plane in enumerate(planes):
        labels, n = label(plane)
        if n:
            keep = np.bincount(labels.ravel()) >= MIN_AREA
            keep[0] = False
            out[i] = keep[labels]
    return out.reshape(mask.shape)


def default_threshold(std: Any) -> float:
    """The threshold offered for a map: :data:`PERCENTILE` of its smoothed values."""
    return sample_percentile(smoothed(std), PERCENTILE)


def uncertain_regions(std: Any, threshold: float | None = None) -> tuple[Any, float]:
    """A 0/1 mask (uint8, lazily for dask) of the regions whose smoothed uncertainty is above
    ``threshold`` (default :func:`default_threshold`), and the threshold used."""
    smooth = smoothed(std)
    if threshold is None:
        threshold = sample_percentile(smooth, PERCENTILE)
    above = smooth > threshold
    if isinstance(above, np.ndarray):
        return _drop_specks(above).astype(np.uint8), float(threshold)
    chunks = above.chunks
    whole_planes = above.rechunk((1,) * (above.ndim - 2) + above.shape[-2:]) if above.ndim > 2 else above.rechunk(above.shape)
    mask = whole_planes.map_blocks(lambda b: _drop_specks(b).astype(np.uint8), dtype=np.uint8)
    return mask.rechunk(chunks), float(threshold)
