"""EMDiffuse-n: denoising of 2D images and stacks (slice by slice).

Training pairs are registered noisy/clean images (or clean images with simulated noise, made by
the caller); the condition is the noisy image; output and input share shape and voxel size.
With ``residual`` (the default) the network generates the difference between the clean and the
noisy image (:class:`~.base.ResidualPairs`), so an untrained model returns its input; models
trained before that option learnt the clean image itself (their model.json lacks the key).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data.degrade import DEFAULT_DOSE, DEFAULT_READ_NOISE, poisson_gaussian, to_unit
from ..data.normalise import check_image, fit_normaliser, match_intensity
from ..engine.grid import TileGrid
from ..errors import InputError
from .base import Block, BlockJob, Geometry, PairSource, PatchPairs, ResidualPairs, Roi, Split, Variant, augment, plane_blocks, plane_of


class DenoiseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    residual: bool = Field(True, description="learn the difference from the noisy input (an untrained model returns the input)")


def as_stack(a: Any) -> Any:
    """A 2D image as a one-slice stack; stacks unchanged (works lazily on dask arrays)."""
    return a[None] if a.ndim == 2 else a


class AlignedPairs(PatchPairs):
    """Random patches at the same place in a condition stack and a target stack.

    ``scale`` > 1 means the target is ``scale`` times larger in y and x (super-resolution); the
    condition is then upsampled by ``upsample`` before it is returned.
    """

    def __init__(
        self,
        cond: np.ndarray,
        target: np.ndarray,
        rows: tuple[int, int],
        cols: tuple[int, int],
        min_std: float,
        scale: int = 1,
        upsample: Callable[[np.ndarray, int], np.ndarray] | None = None,
    ) -> None:
        self.cond, self.target = cond, target
        self.rows, self.cols = rows, cols
        self.min_std, self.scale, self.upsample = min_std, scale, upsample
        self.summary = {"slices": int(cond.shape[0]), "rows": list(rows), "cols": list(cols)}

    def _one(self, rng: np.random.Generator, patch: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.scale
        p_lo = patch // s
        y_hi = self.rows[1] - p_lo
        x_hi = self.cols[1] - p_lo
        best = None
        for _ in range(10):  # prefer patches with structure (skip resin, empty borders)
            z = int(rng.integers(self.cond.shape[0]))
            y = int(rng.integers(self.rows[0], y_hi + 1))
            x = int(rng.integers(self.cols[0], x_hi + 1))
            c = self.cond[z, y : y + p_lo, x : x + p_lo]
            t = self.target[z, y * s : y * s + patch, x * s : x * s + patch]
            std = float(t.std())
            if best is None or std > best[0]:
                best = (std, c, t)
            if std >= self.min_std:
                break
        _, c, t = best
        if self.upsample is not None:
            c = self.upsample(c, s)
        return augment(c[None], t[None], rng)


def paired_region(cond: Any, target: Any, split: Split, scale: int = 1) -> tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[int, int]]:
    """Load a pair (in memory), crop it to the split's ROI, and give the split's rows and columns."""
    cond, target = as_stack(cond), as_stack(target)
    h, w = cond.shape[-2:]
    r = (split.roi or Roi(0, h, 0, w)).clip(h, w)
    cond = np.asarray(cond[:, r.y0 : r.y1, r.x0 : r.x1])
    target = np.asarray(target[:, r.y0 * scale : r.y1 * scale, r.x0 * scale : r.x1 * scale])
    return cond, target, split.rows(cond.shape[1], scale), (0, cond.shape[2])


class Denoise(Variant):
    name = "denoise"
    title = "EMDiffuse-n (denoising)"
    description = "Removes noise from EM images and stacks, slice by slice, with an uncertainty map."
    training_inputs = ("input", "target")
    baseline_name = "noisy input"
    options_model = DenoiseOptions
    # the truth is a clean (high-dose) image and the network removes most of the input's noise:
    # its error hardly grows with it (chosen on ISBI slices 24-25 at a half to an eighth of the
    # bundled model's dose: benchmarks/study_noise_widening.py)
    noise_exponent = 0.25

    def channels(self, options: BaseModel) -> tuple[int, int]:
        return 1, 1

    def output_geometry(self, shape: Sequence[int], voxel: Sequence[float], options: BaseModel) -> Geometry:
        return Geometry(tuple(shape), tuple(voxel))

    def option_phrases(self, options: BaseModel) -> list[str]:
        """Nothing for a residual model (every new one learns only the noise to remove); an
        imported one, or one trained before the option, generates the whole image instead."""
        return [] if options.residual else ["generates the clean image itself, not only the noise to remove"]

    def from_clean(self, clean: np.ndarray, options: BaseModel, **degradation: Any) -> dict[str, Any]:
        """Poisson-Gaussian noise (``dose`` counts at full scale, ``read_noise``) on the clean images."""
        check_image(clean, "clean images", self.input_ndims)
        unit = to_unit(clean, "clean images")
        dose, read_noise = degradation.get("dose", DEFAULT_DOSE), degradation.get("read_noise", DEFAULT_READ_NOISE)
        noisy = poisson_gaussian(unit, dose, read_noise, degradation.get("seed", 0))
        return {"input": noisy, "target": unit}

    def check_pair(self, cond: Any, target: Any) -> None:
        check_image(cond, "input", self.input_ndims)
        check_image(target, "target", self.input_ndims)
        if tuple(cond.shape) != tuple(target.shape):
            raise InputError(f"input and target differ in shape ({tuple(cond.shape)} vs {tuple(target.shape)}); register them first")

    def training_pairs(self, arrays: dict[str, Any], options: BaseModel, split: Split) -> PairSource:
        cond, target = arrays["input"], arrays["target"]
        self.check_pair(cond, target)
        plane = cond.shape
        cond, target, rows, cols = paired_region(cond, target, split)
        nc = fit_normaliser(cond, name="input")
        a, b = match_intensity(target, cond)  # the target on the input's scale: outputs map back to it
        src = AlignedPairs(nc.forward(cond), nc.forward(a * target.astype(np.float32) + b), rows, cols, split.min_std)
        src.patch = split.fit_patch("input", plane, rows, cols)
        src.summary.update(input_normaliser=nc.to_dict(), target_to_input=[a, b])
        return ResidualPairs(src, lambda c: c) if options.residual else src  # the condition is the noisy input

    def blocks(self, shape: Sequence[int], options: BaseModel, samples: int = 0, grid: TileGrid | None = None) -> list[Block]:
        return plane_blocks(shape, shape, grid)

    def predict_block(self, source: np.ndarray, block: Block, options: BaseModel, job: BlockJob) -> None:
        plane = as_stack(source)[0]
        top = block.source[-2].start  # the plane row of the source's first; its columns are the tiles' span

        def read(y0: int, y1: int) -> np.ndarray:
            return job.normaliser.forward(np.asarray(plane[y0 - top : y1 - top]))[None]

        base = read if options.residual else None
        job.run(read, *block.planes[0], base=base, plane_key=plane_of(block), window=block.window)
