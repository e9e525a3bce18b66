"""Fixtures for the data tests: real EM from ../shared/data and known distortions of it, to
measure registration and drift correction against (``distort.known_warp`` etc.)."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi


def known_warp(shape, shift=(7.3, -11.6), angle=3.0, elastic=3.0, smooth=48.0, seed=0):
    """For every pixel p of a distorted image, the position in the original it shows: a rotation
    by ``angle`` degrees about the centre, a ``shift`` (y, x) and a smooth random displacement of
    at most ``elastic`` pixels (section warping). Returns (qy, qx) float32 maps."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx, a = (h - 1) / 2, (w - 1) / 2, np.deg2rad(angle)
    qy = cy + np.cos(a) * (yy - cy) - np.sin(a) * (xx - cx) + shift[0]
    qx = cx + np.sin(a) * (yy - cy) + np.cos(a) * (xx - cx) + shift[1]
    dy, dx = (ndi.gaussian_filter(rng.normal(size=shape), smooth) for _ in range(2))
    s = elastic / max(np.abs(dy).max(), np.abs(dx).max())
    return (qy + dy * s).astype(np.float32), (qx + dx * s).astype(np.float32)


def apply_warp(image, qy, qx):
    return cv2.remap(np.asarray(image, np.float32), qx, qy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def edge_warp(image, width, amp):
    """A section warp at an edge: ``image`` (wider than ``width``) seen over its first ``width``
    columns, its lower right carried ``amp`` px further right (a smooth bump, ramping up over the
    last 100 columns), so the right edge shows up to ``amp`` px of what lies past ``width``.
    Returns the warped image and, for every pixel, how far right of its position the content comes from."""
    h = image.shape[0]
    yy, xx = np.mgrid[0:h, 0:width].astype(np.float32)
    d = amp * np.exp(-(((yy - 0.7 * h) / (0.15 * h)) ** 2)) * np.clip((xx - (width - 100)) / 100, 0, 1)
    return cv2.remap(np.asarray(image, np.float32), xx + d, yy, cv2.INTER_CUBIC), d


def heavy_noise(image01, seed=0, peak=5.0, read=0.05):
    """5 counts at full scale (SNR about 1.5 at mid grey) plus read noise: a very low dose."""
    rng = np.random.default_rng(seed)
    return (rng.poisson(np.clip(image01, 0, None) * peak) / peak + rng.normal(0, read, image01.shape)).astype(np.float32)


def drifted(volume, seed=0, step=1.5):
    """The stack with a random-walk drift (std ``step`` px per slice) applied; slice z's content
    moves by ``d[z]``, so sampling it at ``p + d[z]`` undoes it. Returns (stack, d)."""
    rng = np.random.default_rng(seed)
    d = np.cumsum(rng.normal(0, step, (volume.shape[0], 2)), axis=0)
    d -= d[0]
    out = np.empty_like(volume)
    for z in range(volume.shape[0]):
        m = np.array([[1, 0, d[z, 1]], [0, 1, d[z, 0]]])
        moved = cv2.warpAffine(volume[z].astype(np.float32), m, volume.shape[:0:-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        out[z] = np.clip(np.rint(moved), 0, 255).astype(volume.dtype)
    return out, d


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


@pytest.fixture(scope="session")
def distort() -> SimpleNamespace:
    """The distortion helpers above (test modules cannot import this file under importlib mode)."""
    return SimpleNamespace(known_warp=known_warp, apply_warp=apply_warp, edge_warp=edge_warp, heavy_noise=heavy_noise, drifted=drifted)
