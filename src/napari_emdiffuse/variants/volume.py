"""What the two isotropic-reconstruction variants share: checking a volume and its voxel size,
loading a training region, and writing the original slices into the interleaved output."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..data.normalise import check_image
from ..errors import InputError
from .base import Roi, split_rows

#: rows written at a time when copying original slices, so a huge plane needs little memory
COPY_ROWS = 1024


def check_volume(image: Any, title: str, name: str = "image", min_slices: int = 2, why: str = "") -> None:
    """Refuse anything but a volume ``(z, y, x)`` with at least ``min_slices`` slices."""
    if len(image.shape) == 2:
        raise InputError(
            f"{title} works on volumes (z, y, x), but the {name} is a single 2D image {tuple(image.shape)}; "
            "open the whole stack, or use EMDiffuse-n / EMDiffuse-r for single images"
        )
    check_image(image, name, (3,))
    if image.shape[0] < min_slices:
        raise InputError(
            f"the {name} has {image.shape[0]} slice(s); {title} needs at least {min_slices}{' ' + why if why else ''}"
        )


def anisotropy_warning(voxel: Sequence[float], factor: float, title: str) -> str | None:
    """A warning when a volume's z voxel over its xy voxel is known and not the model's factor.

    A ratio of exactly 1 is taken as "voxel size unknown" (napari's default scale) and passes.
    """
    if len(voxel) < 3 or voxel[1] <= 0 or voxel[0] <= 0:
        return None
    ratio = voxel[0] / voxel[1]
    if math.isclose(ratio, 1.0) or abs(ratio / factor - 1) <= 0.1:
        return None
    return (
        f"this {title} model fills in a factor of {factor:g} between slices, but the input's z voxel is "
        f"{ratio:.3g} times its xy voxel: the output will not be isotropic. Train or fine-tune a model "
        f"with factor {ratio:.3g} (the variant option 'factor'), or check the input's voxel size."
    )


def volume_region(
    volume: Any, split: str, val_fraction: float, patch: int, roi: Roi | None
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """The volume cropped to the ROI (in memory, in its own dtype) and the split's rows and columns.

    Validation is a strip of rows at the bottom of every slice, as for the 2D variants
    (``split`` "all": every row).
    """
    h, w = volume.shape[-2:]
    r = (roi or Roi(0, h, 0, w)).clip(h, w)
    vol = np.asarray(volume[:, r.y0 : r.y1, r.x0 : r.x1])
    train_rows, val_rows = split_rows(vol.shape[1], val_fraction, patch)
    rows = {"train": train_rows, "val": val_rows, "all": (0, vol.shape[1])}[split]
    return vol, rows, (0, vol.shape[2])


def copy_slice(stack: Any, z_in: int, z_out: int, out_mean: Any, out_samples: Any | None) -> None:
    """Put input slice ``z_in`` unchanged into output plane ``z_out`` (and into every sample).

    The uncertainty of an original slice is zero, which the zero-filled output already holds.
    """
    h = stack.shape[1]
    for r0 in range(0, h, COPY_ROWS):
        rows = np.asarray(stack[z_in, r0 : r0 + COPY_ROWS])
        out_mean[z_out, r0 : r0 + rows.shape[0]] = rows
        if out_samples is not None:
            k = out_samples.shape[0]
            out_samples[:, z_out, r0 : r0 + rows.shape[0]] = np.broadcast_to(rows, (k, *rows.shape))
