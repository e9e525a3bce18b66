"""Where training patches come from: a grid over each plane, a contrast filter, a split by region.

Training itself draws random crops (``variants/*.training_pairs``); this module decides which
parts of a user's data are worth keeping in a prepared training set: patches with structure
(not resin, not an empty or saturated border), well registered, and a validation set that shares
no pixel, and no slice, with the training set.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from ..errors import InputError
from .normalise import Normaliser


@dataclass(frozen=True)
class PatchGeometry:
    """Patch sizes of a variant: the target patch (fine pixels) and the input patch
    (``target // factor`` for super-resolution pairs, the same otherwise)."""

    target: int
    factor: int = 1

    @property
    def input(self) -> int:
        return self.target // self.factor

    @classmethod
    def fit(cls, patch: int, factor: int, title: str) -> "PatchGeometry":
        """``patch`` rounded down to a multiple of 16 times ``factor``, the variant's
        (``title``'s) factor between input and target pixels."""
        step = 16 * factor
        size = patch // step * step
        if size < step:
            raise InputError(f"patch size {patch} is too small: use at least {step} px for {title}")
        return cls(size, factor)


def grid(height: int, width: int, patch: int, name: str = "image", scale: int = 1) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping ``patch`` squares that fit a plane, centred so
    that the leftover margin (where a registered target often does not reach) is split between
    both sides. :func:`~.register.patch_ncc` scores the same squares.

    A plane smaller than a patch is refused naming the image by its role ``name`` (which
    :func:`..errors.naming` turns into its file), in its own pixels, ``scale`` times finer than
    the plane's (a super-resolution target, whose pixels ``--patch`` counts)."""
    rows, cols = height // patch, width // patch
    if rows == 0 or cols == 0:
        raise InputError(f"{name} has planes of {height * scale} x {width * scale} px, smaller than a {patch * scale} px patch; set a smaller --patch")
    y0, x0 = (height - rows * patch) // 2, (width - cols * patch) // 2
    return [(y0 + i * patch, x0 + j * patch) for i in range(rows) for j in range(cols)]


def contrast(patch: np.ndarray, normaliser: Normaliser) -> tuple[float, float]:
    """Standard deviation in normalised units ([-1, 1] between the percentiles) and the
    fraction of pixels outside the percentile range (saturated, or a padded border)."""
    v = normaliser.forward(patch)
    return float(v.std()), float(np.mean((v <= -1.0) | (v >= 1.0)))


def has_structure(patch: np.ndarray, normaliser: Normaliser, min_std: float, max_clipped: float = 0.5) -> bool:
    """Keep patches with contrast that are mostly inside the intensity range."""
    std, clipped = contrast(patch, normaliser)
    return std >= min_std and clipped <= max_clipped


def split_slices(depth: int, val_fraction: float) -> tuple[range, range]:
    """Train and validation slices of a stack: validation is the last ``val_fraction`` of the
    slices, with one slice left out in between (neighbouring slices share structures)."""
    n_val = max(1, round(val_fraction * depth))
    if depth - n_val - 1 < 1:
        raise InputError(f"{depth} slice(s) cannot be split by slice; split by rows instead")
    return range(0, depth - n_val - 1), range(depth - n_val, depth)


def split_rows_of_grid(corners: list[tuple[int, int]], patch: int, val_fraction: float) -> tuple[list, list]:
    """For a single plane: the bottom patch rows are validation (at least one row, and never
    all of them), the others training."""
    ys = sorted({y for y, _ in corners})
    if len(ys) < 2:
        raise InputError(f"a single row of {patch} px patches cannot be split into training and validation; use a smaller --patch")
    n_val = min(len(ys) - 1, max(1, round(val_fraction * len(ys))))
    val_ys = set(ys[-n_val:])
    return [c for c in corners if c[0] not in val_ys], [c for c in corners if c[0] in val_ys]
