"""vEMDiffuse-a: isotropic reconstruction learnt from the anisotropic volume itself.

There is no isotropic data to learn from, but within each slice the resolution is high. So a
lateral axis stands in for z: in training, an xy patch keeps only every ``r``-th row (or, at
random, column), the rows between are linearly interpolated, and the network learns what that
interpolation misses (:class:`~.base.ResidualPairs`). In prediction the same degradation is met
along z: each xz plane of the volume (slices as rows) is linearly interpolated onto a grid ``r``
times finer, and the network restores it. The assumption is that the sample's structure is statistically the same along z
as along y and x (roughly isotropic tissue); see docs/variants/iso-a.md for its limits.

Because the network works on planes that contain the z axis, all the slices between two input
slices, and the gaps on both sides of an input slice, are generated together in one image:
nothing can jump at a gap boundary. Neighbouring xz planes get the same starting noise, so a
feature that continues in y is generated alike in both and the xy view does not flicker.
The network learnt from rows and from columns alike, so the yz planes (slices as rows, y as
columns) are a second view of the same voxels. With ``both_views`` (the default) the best
estimate is the mean of the xz and the yz reconstructions, whose errors are partly independent
(docs/variants/iso-a.md has the measured gain); this is what CARE's isotropic reconstruction does too. Only the best estimate pass runs on the yz planes (two
network evaluations per tile, against the samples' ``K x steps``); the samples and their
spread (the error map) stay the xz planes', so each sample is one coherent draw.
``r`` (the factor) may be fractional, e.g. 12.5 for a 4 x 4 x 50 nm stack, so the output's z
voxel can equal the lateral one exactly; input slices that fall on the output grid are kept
unchanged.

With ``emdiffuse_original`` (imported original vEMDiffuse-a weights) prediction fills the gaps
between xy slices as the original does (:func:`~.volume.predict_original_gap`), and fine-tuning
makes its pairs as the original did: y stands in for z, gaps between xz planes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..data.normalise import Normaliser, fit_normaliser
from ..engine.grid import TileGrid
from ..errors import InputError
from .base import Base, Block, BlockJob, Geometry, PairSource, PatchPairs, ResidualPairs, Split, Variant
from .factor import RatioFactor
from .volume import ORIGINAL_HELP, OriginalGapPairs, anisotropy_warning, check_volume, decimated_pair, gap_blocks, predict_original_gap, volume_region, z_factor_phrase

MAX_FACTOR = 16.0
#: memory for the output planes of one block of rows (y) during prediction
BUFFER_BYTES = 256 * 2**20
#: with both views, blocks may grow to this so that they are a tile deep: each block computes
#: every yz tile that reaches its rows, so blocks much thinner than a tile repeat that work
VIEWS_BUFFER_BYTES = 1024 * 2**20


class IsoAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: RatioFactor(MAX_FACTOR, "z voxel size divided by the xy voxel size, e.g. 12.5 for 4 x 4 x 50 nm") = 4.0
    emdiffuse_original: bool = Field(False, description=ORIGINAL_HELP)
    both_views: bool = Field(
        True,
        description="the best estimate averages the reconstructions from the xz and the yz planes "
        "(the network learnt both; about 0.2 dB more accurate for 5-20 % more time, more for volumes of thousands of px "
        "a side: docs/variants/iso-a.md); the samples "
        "and their spread come from the xz planes. Not used with emdiffuse_original",
    )

    @model_validator(mode="after")
    def _whole_for_original(self) -> "IsoAOptions":
        if self.emdiffuse_original and self.factor != int(self.factor):
            raise ValueError(f"the original vEMDiffuse network fills whole gaps: factor must be a whole number, not {self.factor:g}")
        return self


def output_slices(n: int, factor: float) -> int:
    """Planes of the output grid from the first input slice to (at most) the last."""
    return int(math.floor((n - 1) * factor + 1e-6)) + 1


def kept_slices(n: int, factor: float) -> list[tuple[int, int]]:
    """``(input slice, output plane)`` for every input slice that falls on the output grid."""
    return [(i, round(i * factor)) for i in range(n) if abs(i * factor - round(i * factor)) < 1e-6]


def interpolate_lines(lines: np.ndarray, positions: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The network's condition for ``rows`` of a plane whose lines ``lines`` (m, W) were measured
    at ``positions`` (m, increasing, same units as ``rows``).

    Channel 0 is the linear interpolation between the measured lines; channel 1 says where
    each row lies between them: -1 on a measured line, 1 half-way, so the network knows which
    rows are measurements without having to guess it from the image.
    """
    rows = np.asarray(rows, np.float64)
    if len(positions) == 1:
        image = np.repeat(lines[:1], len(rows), axis=0)
        where = np.zeros(len(rows))
    else:
        j = np.clip(np.searchsorted(positions, rows, side="right") - 1, 0, len(positions) - 2)
        p0, p1 = positions[j], positions[j + 1]
        t = np.clip((rows - p0) / (p1 - p0), 0.0, 1.0)
        image = lines[j] * (1 - t)[:, None] + lines[j + 1] * t[:, None]
        where = 1 - np.abs(2 * t - 1)
    pos = np.broadcast_to((2 * where - 1)[:, None], image.shape)
    return np.stack([image, pos]).astype(np.float32)


def min_patch(factor: float) -> int:
    """Patches must hold at least two whole gaps, so the network sees lines on both sides."""
    return 16 * math.ceil((2 * factor + 1) / 16)


class LateralPairs(PatchPairs):
    """xy patches with every ``factor``-th row (or column) kept and the rest interpolated
    (condition), and the full patch (target)."""

    def __init__(
        self,
        volume: np.ndarray,
        normaliser: Normaliser,
        factor: float,
        rows: tuple[int, int],
        cols: tuple[int, int],
        min_std: float,
    ) -> None:
        self.volume, self.normaliser, self.r = volume, normaliser, factor
        self.rows, self.cols, self.min_std = rows, cols, min_std
        self.summary = {"slices": int(volume.shape[0]), "rows": list(rows), "cols": list(cols), "factor": factor}

    def _lines(self, rng: np.random.Generator, a0: int, patch: int, a_lo: int, a_hi: int) -> np.ndarray:
        """Measured rows ``factor`` apart (rounded to whole rows) covering ``[a0, a0 + patch)``,
        at a random phase, within ``[a_lo, a_hi)``."""
        start = max(a_lo, a0 - rng.uniform(0, self.r))
        out = []
        i = 0
        while True:
            q = int(math.floor(start + i * self.r + 0.5))
            if q > a_hi - 1:
                if out[-1] < a0 + patch - 1:
                    out.append(a_hi - 1)  # the region ends: a shorter last gap
                break
            out.append(q)
            if q >= a0 + patch - 1:
                break
            i += 1
        return np.array(out)

    def _one(self, rng: np.random.Generator, patch: int) -> tuple[np.ndarray, np.ndarray]:
        best = None
        for _ in range(10):  # prefer patches with structure
            z = int(rng.integers(self.volume.shape[0]))
            across = bool(rng.integers(2))  # x stands in for z instead of y
            view = self.volume[z].T if across else self.volume[z]
            (a_lo, a_hi), (b_lo, b_hi) = (self.cols, self.rows) if across else (self.rows, self.cols)
            a0 = int(rng.integers(a_lo, a_hi - patch + 1))
            b0 = int(rng.integers(b_lo, b_hi - patch + 1))
            target = self.normaliser.forward(view[a0 : a0 + patch, b0 : b0 + patch])
            std = float(target.std())
            if best is None or std > best[0]:
                best = (std, view, a0, b0, a_lo, a_hi, target)
            if std >= self.min_std:
                break
        _, view, a0, b0, a_lo, a_hi, target = best
        lines = self._lines(rng, a0, patch, a_lo, a_hi)
        measured = self.normaliser.forward(view[lines, b0 : b0 + patch])
        cond = interpolate_lines(measured, (lines - a0).astype(np.float64), np.arange(patch))
        target = target[None]
        if rng.integers(2):  # no preferred direction along the stand-in axis
            cond, target = cond[:, ::-1], target[:, ::-1]
        if rng.integers(2):
            cond, target = cond[:, :, ::-1], target[:, :, ::-1]
        return np.ascontiguousarray(cond), np.ascontiguousarray(target)


class AxialPlaneWriter:
    """Lets the tiler write one plane that contains z, ``(1, rows, n)`` blocks, into row ``y``
    (an xz plane) or, with ``across``, column ``y`` (a yz plane) of a ``(z, y, x)`` buffer
    (``(K, z, y, x)`` for samples), through ``transform`` after adding the ``base`` rows of a
    residual model."""

    def __init__(
        self, buffer: np.ndarray, y: int, transform: Callable[[np.ndarray], np.ndarray], base: Base | None = None, across: bool = False
    ) -> None:
        self.buffer, self.y, self.transform, self.base, self.across = buffer, y, transform, base, across

    def __setitem__(self, key: tuple, value: np.ndarray) -> None:
        rows = key[-1]
        if self.base is not None:
            value = value + self.base(rows.start, rows.stop)
        at = (rows, slice(None), self.y) if self.across else (rows, self.y, slice(None))
        self.buffer[(Ellipsis, *at)] = self.transform(value)[..., 0, :, :]


class IsoA(Variant):
    name = "iso_a"
    title = "vEMDiffuse-a (isotropic reconstruction from the anisotropic volume alone)"
    description = (
        "Generates the missing slices of an anisotropic volume, learnt from its own xy planes "
        "(assumes roughly isotropic structure); z voxel size divided by the factor."
    )
    training_inputs = ("volume",)
    baseline_name = "linear interpolation"
    input_ndims = (3,)
    options_model = IsoAOptions

    def channels(self, options: BaseModel) -> tuple[int, int]:
        return (int(options.factor) - 1, 2) if options.emdiffuse_original else (1, 2)

    def output_geometry(self, shape: Sequence[int], voxel: Sequence[float], options: BaseModel) -> Geometry:
        r = options.factor
        return Geometry((output_slices(shape[0], r), *shape[1:]), (voxel[0] / r, *voxel[1:]))

    def option_phrases(self, options: BaseModel) -> list[str]:
        """The factor, and how the result is made: the original's gap filling (both views unused
        there), or the xz view alone or averaged with the yz view."""
        if options.emdiffuse_original:
            return [z_factor_phrase(options.factor), self.original_phrase()]
        return [z_factor_phrase(options.factor), "averages its xz and yz views" if options.both_views else "from its xz view only"]

    def voxel_warning(self, voxel: Sequence[float], options: BaseModel) -> str | None:
        return anisotropy_warning(voxel, options.factor, self.title.split(" (")[0])

    def check_input(self, image: Any, options: BaseModel, name: str = "image") -> None:
        check_volume(image, self.title, name, 2, "(two slices bound each gap it fills)")

    def from_clean(self, clean: np.ndarray, options: BaseModel, **degradation: Any) -> dict[str, Any]:
        raise InputError(f"{self.title} learns from the anisotropic volume itself: give it as the volume (--volume)")

    def calibration_pair(self, clean: np.ndarray, options: BaseModel, **degradation: Any) -> tuple[np.ndarray, np.ndarray]:
        """Every ``factor``-th slice of an isotropic volume, and the volume as the truth."""
        return decimated_pair(clean, options.factor, self.title)

    def calibration_voxel(self, voxel: Sequence[float], options: BaseModel) -> tuple[float, ...]:
        """Every ``factor``-th slice kept: the slices lie ``factor`` times further apart."""
        return (voxel[0] * options.factor, *voxel[1:])

    def training_pairs(self, arrays: dict[str, Any], options: BaseModel, split: Split) -> PairSource:
        r = options.factor
        volume = arrays["volume"]
        if options.emdiffuse_original:  # its patches are xz: a patch is as high as there are slices
            check_volume(volume, self.title, "volume", 16, "(the original network trains on xz patches, at least 16 px high)")
        else:
            check_volume(volume, self.title, "volume", 1)
        need = min_patch(r)
        if split.patch < need:
            raise InputError(f"factor {r:g} needs training patches of at least {need} px (two gaps of {r:g} rows); set train.patch_size to {need} or more")
        vol, rows, cols = volume_region(volume, split)
        fitted = split.fit_patch("volume", volume.shape, rows, cols, least=need)
        norm = fit_normaliser(vol, name="volume")
        if options.emdiffuse_original:  # as the original: y stands in for z, gaps between xz planes
            k = int(r)
            planes = np.ascontiguousarray(vol[:, rows[0] : rows[1]].transpose(1, 0, 2))
            if planes.shape[0] <= k:
                raise InputError(f"the training region has {planes.shape[0]} rows; factor {k} needs more than {k}")
            pairs = OriginalGapPairs(planes, norm, k, (0, planes.shape[1]), cols, split.min_std)
            pairs.patch = split.fit_patch("volume", volume.shape, (0, planes.shape[1]), cols)
            pairs.summary["normaliser"] = norm.to_dict()
            return pairs
        pairs = LateralPairs(vol, norm, r, rows, cols, split.min_std)
        pairs.patch = fitted
        pairs.summary["normaliser"] = norm.to_dict()
        return ResidualPairs(pairs, lambda c: c[:, :1])  # channel 0 is the linear interpolation

    def blocks(self, shape: Sequence[int], options: BaseModel, samples: int = 0, grid: TileGrid | None = None) -> list[Block]:
        """With ``emdiffuse_original`` one block per gap; otherwise blocks of rows (y), each all
        its xz planes at once, as many rows as fit :data:`BUFFER_BYTES`. With ``both_views``
        a block also runs its rows of every yz plane through the best estimate, reading the
        rows the tiles of ``grid`` over them span (all rows without a grid), and is up to a
        tile deep where :data:`VIEWS_BUFFER_BYTES` allows."""
        if options.emdiffuse_original:
            return gap_blocks(shape, int(options.factor))
        n, h, w = (int(s) for s in shape)
        n_out = output_slices(n, options.factor)
        per_row = n_out * w * 4 * (2 + samples + options.both_views) + n * w * 8
        step = BUFFER_BYTES // per_row
        if options.both_views and grid is not None:
            step = max(step, min(grid.tile, VIEWS_BUFFER_BYTES // per_row))
        step = int(np.clip(step, 1, h))
        planes = ((n_out, w),)
        blocks = []
        for i, y in enumerate(range(0, h, step)):
            rows = slice(y, min(y + step, h))
            read, views = rows, ()
            if options.both_views:
                region = (0, n_out, rows.start, rows.stop)  # of a yz plane: z by y
                span = grid.span(n_out, h, region) if grid is not None else (0, n_out, 0, h)
                read, views = slice(span[2], span[3]), ((n_out, h, region),) * w
            region3 = (slice(0, n_out), rows, slice(0, w))
            blocks.append(Block(i, region3, planes * (rows.stop - rows.start), (slice(0, n), read, slice(0, w)), estimate_planes=views))
        return blocks

    def predict_block(self, source: np.ndarray, block: Block, options: BaseModel, job: BlockJob) -> None:
        r = options.factor
        if options.emdiffuse_original:
            return predict_original_gap(source, block, int(r), job)
        normaliser, mean, std, samples = job.normaliser, job.mean, job.std, job.samples
        n, _, w = source.shape  # every slice, the rows the block reads
        n_out = output_slices(n, r)
        positions = np.arange(n) * r
        first = block.region[1].start - block.source[1].start  # the block's first row in source
        raw = source[:, first : first + mean.shape[1]]
        lines = normaliser.forward(source)

        def reader(at: tuple) -> Callable[[int, int], np.ndarray]:
            """Rows ``r0:r1`` (output z) of the plane through ``lines[:, *at]``, interpolated."""

            def read(r0: int, r1: int) -> np.ndarray:
                i0 = min(int(r0 // r), n - 2)
                i1 = min(n - 1, max(i0 + 1, math.ceil((r1 - 1) / r)))
                return interpolate_lines(lines[(slice(i0, i1 + 1), *at)], positions[i0 : i1 + 1], np.arange(r0, r1))

            return read

        for j in range(raw.shape[1]):
            read = reader((first + j,))

            def base(r0: int, r1: int, _read: Callable[[int, int], np.ndarray] = read) -> np.ndarray:
                return _read(r0, r1)[:1]

            job.sample_plane(  # xz planes: each fills one row of the block's arrays
                read,
                n_out,
                w,
                AxialPlaneWriter(mean, j, normaliser.inverse, base),
                AxialPlaneWriter(std, j, normaliser.scale_std),
                AxialPlaneWriter(samples, j, normaliser.inverse, base) if samples is not None else None,
                plane_key=0,  # the same noise for every xz plane: see the module docstring
            )
        if block.estimate_planes and job.estimate_plane is not None:
            # the yz planes through the block's rows: a second estimate of the same voxels, averaged in
            second = np.zeros_like(mean)
            for x, (height, width, region) in enumerate(block.estimate_planes):
                read = reader((slice(None), x))
                cols = slice(region[2] - block.source[1].start, region[3] - block.source[1].start)

                def base(r0: int, r1: int, _read: Callable[[int, int], np.ndarray] = read, _cols: slice = cols) -> np.ndarray:
                    return _read(r0, r1)[:1, :, _cols]

                job.estimate_plane(read, height, width, AxialPlaneWriter(second, x, normaliser.inverse, base, across=True), region)
            mean += second
            mean *= 0.5
        for i, z in kept_slices(n, r):  # the input slices, unchanged and certain
            mean[z] = raw[i]
            std[z] = 0
            if samples is not None:
                samples[:, z] = raw[i]
