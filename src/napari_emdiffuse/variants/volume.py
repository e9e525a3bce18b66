"""What the two isotropic-reconstruction variants share: checking a volume and its voxel size,
loading a training region, writing the original slices into the interleaved output, and driving
an imported original vEMDiffuse network as the original code does."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ..data.normalise import Normaliser, check_image
from ..errors import InputError
from .base import Base, Block, BlockJob, PatchPairs, Roi, Split, augment

#: rows written at a time when copying original slices, so a huge plane needs little memory
COPY_ROWS = 1024


def check_volume(image: Any, title: str, name: str = "image", min_slices: int = 2, why: str = "") -> None:
    """Refuse anything but a volume ``(z, y, x)`` with at least ``min_slices`` slices. The
    messages start with ``name``, which :func:`..errors.naming` turns into the file's."""
    if len(image.shape) == 2:
        raise InputError(
            f"{name} is a single 2D image {tuple(image.shape)}, but {title} works on volumes (z, y, x); "
            "open the whole stack, or use EMDiffuse-n / EMDiffuse-r for single images"
        )
    check_image(image, name, (3,))
    if image.shape[0] < min_slices:
        raise InputError(
            f"{name} has {image.shape[0]} slice(s) (shape {tuple(image.shape)}); {title} needs at least {min_slices}{' ' + why if why else ''}"
        )


def decimated_pair(clean: Any, factor: float, title: str) -> tuple[np.ndarray, np.ndarray]:
    """An anisotropic volume (every ``factor``-th slice of ``clean``, scaled to 0..1) and the
    isotropic truth its reconstruction should match (``clean`` up to the last kept slice)."""
    from ..data.degrade import decimate_z, to_unit

    if factor != int(factor):
        raise InputError(f"simulating an anisotropic volume needs a whole factor, not {factor:g}; give --input and --truth instead")
    k = int(factor)
    check_volume(clean, title, "clean volume", 2 * k + 1, f"(every {k}th slice is kept: at least three slices and two gaps)")
    unit = to_unit(np.asarray(clean), "clean volume")
    low = np.ascontiguousarray(decimate_z(unit, k))
    return low, np.ascontiguousarray(unit[: (low.shape[0] - 1) * k + 1])


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


def volume_region(volume: Any, split: Split) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """The volume cropped to the split's ROI (in memory, in its own dtype) and the split's rows
    and columns: validation is a strip of rows at the bottom of every slice, as for the 2D variants."""
    h, w = volume.shape[-2:]
    r = (split.roi or Roi(0, h, 0, w)).clip(h, w)
    vol = np.asarray(volume[:, r.y0 : r.y1, r.x0 : r.x1])
    return vol, split.rows(vol.shape[1]), (0, vol.shape[2])


def gap_blocks(shape: Sequence[int], k: int, context: Callable[[int, int], Sequence[int]] = lambda g, n: (g, g + 1)) -> list[Block]:
    """One block per gap between input slices ``g`` and ``g + 1`` of a ``(n, h, w)`` volume whose
    output has ``k`` planes per gap: the ``k - 1`` generated planes and the input slice after
    them (the first block also holds the first input slice). Each reads the input slices from
    the first to the last of ``context(g, n)`` (the slices its condition sees)."""
    n, h, w = (int(s) for s in shape)
    rows, cols = slice(0, h), slice(0, w)

    def source(g: int) -> tuple[slice, ...]:
        near = context(g, n)
        return (slice(min(near), max(near) + 1), rows, cols)

    return [Block(g, (slice(0 if g == 0 else g * k + 1, (g + 1) * k + 1), rows, cols), ((h, w),), source(g)) for g in range(n - 1)]


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


def z_factor_phrase(factor: float) -> str:
    """The vEM variants' factor in words: how much finer z becomes and, for a whole factor, how
    many slices each gap between two input slices gets (a fractional one gives gaps of varying
    length)."""
    if factor != int(factor):
        return f"{factor:g}x finer in z (k = {factor:g}): new slices between the input slices"
    k = int(factor)
    return f"{k}x finer in z (k = {k}): {k - 1} new slice{'s' if k > 2 else ''} between each two input slices"


#: what the ``emdiffuse_original`` option of the vEM variants means (imported original weights)
ORIGINAL_HELP = (
    "drive the network as the original vEMDiffuse code does (imported weights): each of the factor - 1 "
    "slices of a gap from its two bounding slices (the later one first) and its slice index"
)


def original_condition(volume: Any, z_lo: int, k: int, rows: slice, cols: slice = slice(None)) -> np.ndarray:
    """The original vEMDiffuse condition for the gap after slice ``z_lo``: the bounding slice
    ``z_lo + k`` first, then ``z_lo`` (its data set's ``cat([img_below, img_up])``)."""
    return np.stack([np.asarray(volume[z_lo + k, rows, cols]), np.asarray(volume[z_lo, rows, cols])])


class OriginalGapPairs(PatchPairs):
    """Training pairs as the original vEMDiffuse makes them: two slices ``k`` apart (later one
    first) as the condition, the ``k - 1`` slices between as the target (channel ``c`` is slice
    ``c + 1`` after the earlier one, the slice index the network embeds), no residual."""

    def __init__(
        self, volume: np.ndarray, normaliser: Normaliser, k: int, rows: tuple[int, int], cols: tuple[int, int], min_std: float
    ) -> None:
        self.volume, self.normaliser, self.k = volume, normaliser, k
        self.rows, self.cols, self.min_std = rows, cols, min_std
        self.summary = {"slices": int(volume.shape[0]), "rows": list(rows), "cols": list(cols), "factor": k}

    def _one(self, rng: np.random.Generator, patch: int) -> tuple[np.ndarray, np.ndarray]:
        k = self.k
        best = None
        for _ in range(10):  # prefer patches with structure
            z0 = int(rng.integers(self.volume.shape[0] - k))
            y = int(rng.integers(self.rows[0], self.rows[1] - patch + 1))
            x = int(rng.integers(self.cols[0], self.cols[1] - patch + 1))
            ys, xs = slice(y, y + patch), slice(x, x + patch)
            target = self.normaliser.forward(self.volume[z0 + 1 : z0 + k, ys, xs])
            std = float(target.std())
            if best is None or std > best[0]:
                best = (std, self.normaliser.forward(original_condition(self.volume, z0, k, ys, xs)), target)
            if std >= self.min_std:
                break
        _, cond, target = best
        return augment(cond, target, rng)


def predict_gap(source: np.ndarray, block: Block, k: int, read: Base, job: BlockJob, base: Base | None = None) -> None:
    """Fill one block of :func:`gap_blocks` from its ``source`` slices: the gap's ``k - 1``
    planes sampled from ``read`` (plus ``base`` for a residual model), the input slices it
    holds copied unchanged."""
    g, lo, z0 = block.index, block.region[0].start, block.source[0].start
    h, w = source.shape[1:]
    if g == 0:
        copy_slice(source, 0 - z0, 0, job.mean, job.samples)
    job.run(read, h, w, start=g * k + 1 - lo, base=base, plane_key=g)
    copy_slice(source, g + 1 - z0, (g + 1) * k - lo, job.mean, job.samples)


def predict_original_gap(source: np.ndarray, block: Block, k: int, job: BlockJob) -> None:
    """One gap of a ``((n - 1) k + 1, h, w)`` output as the original vEMDiffuse fills it: the
    ``k - 1`` slices generated from the two bounding slices (``source``: those two), input
    slices kept."""

    def read(y0: int, y1: int) -> np.ndarray:
        return job.normaliser.forward(original_condition(source, block.index - block.source[0].start, 1, slice(y0, y1)))

    predict_gap(source, block, k, read, job)
