"""One block of a prediction, computed the same way wherever it runs.

A variant cuts its output into independent :class:`~..variants.base.Block` s; a
:class:`BlockRunner` (the network on a device, the sampler passes, the normalisation) turns one
block into its arrays. The predict job runs it in-process (and so in the napari worker thread);
:mod:`.cluster` runs it on dask workers, one runner per worker. The result of a block does not
depend on where or in what order it ran, which is what makes resuming and distributing exact
(on machines that run the network in the same precision: bf16 and float32, see
``engine.device.uses_bf16``, differ in the last digits; the output's provenance records which,
and a resumed store that mixes them records both and warns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pydantic import BaseModel

from ..config import SampleConfig
from ..data.containers import CHUNK_PX, default_chunks
from ..data.normalise import Normaliser, to_dtype
from ..engine.device import autocast, configure_backends, prepare_network
from ..engine.diffusion import Denoiser, Schedule
from ..engine.samplers import get_sampler, posterior_mean
from ..engine.tiling import TiledSampler
from ..model_file import Model
from ..variants import get_variant
from ..variants.base import Block, BlockJob

ESTIMATES = ("best", "mean")


class _Discard:
    """An output that keeps nothing (the sampling pass's mean, when the best estimate is the output)."""

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        pass


@dataclass
class BlockResult:
    """A block's arrays: ``mean`` and the samples' ``spread`` (per-pixel standard deviation,
    before pooling into the error map) of ``block.shape``, ``samples`` of ``(K, *block.shape)``;
    float32, in the input's intensity units."""

    block: Block
    mean: np.ndarray
    spread: np.ndarray
    samples: np.ndarray | None


class BlockRunner:
    """Everything a block needs, built once per process: the network on ``device``, one tiled
    sampler per pass (with the best estimate, a posterior-mean pass for the output and a
    sampling pass for the spread), the variant and its options (checked by the caller:
    ``variants.model_options``), and the normaliser."""

    def __init__(
        self,
        model: Model,
        options: BaseModel,
        cfg: SampleConfig,
        normaliser: Normaliser,
        device: torch.device,
        estimate: str = "best",
        keep_samples: bool = False,
        compile: bool = False,
    ) -> None:
        if estimate not in ESTIMATES:
            raise ValueError(f"unknown estimate {estimate!r}; choose one of {', '.join(ESTIMATES)}")
        self.variant, self.options = get_variant(model.variant), options
        self.normaliser, self.device = normaliser, device
        self.n_samples = cfg.samples if keep_samples else 0
        configure_backends(device)
        network = prepare_network(model.network.eval(), device, compile=compile)
        denoiser = Denoiser.from_config(network, model.preset.diffusion)
        sigmas = Schedule.from_config(model.preset.diffusion).sampling_sigmas(cfg.steps, cfg.spacing)
        self._on_step: Callable[[int, int], None] | None = None

        def tiler(sampler: Any, levels: torch.Tensor, samples: int, pack: bool = False) -> TiledSampler:
            return TiledSampler(
                denoiser, sampler, levels, out_channels=model.info.out_channels, size_multiple=network.size_multiple,
                tile_size=cfg.tile_size, overlap=cfg.overlap, samples=samples, tile_batch=cfg.tile_batch,
                device=device, seed=cfg.seed, step_callback=self._step, pack=pack,
            )  # fmt: skip

        self.sampling = tiler(get_sampler(cfg.sampler, cfg.eta), sigmas, cfg.samples)
        # the best estimate: one pass at the highest noise level (posterior_mean uses sigmas[0] only)
        self.tilers = [tiler(posterior_mean, sigmas[[0, -1]], 1), self.sampling] if estimate == "best" else [self.sampling]
        # a block's second view of its output (Block.estimate_planes): only the tiles it needs
        self.second_view = tiler(posterior_mean, sigmas[[0, -1]], 1, pack=True) if estimate == "best" else None

    def _step(self, done: int, total: int) -> None:
        if self._on_step is not None:
            self._on_step(done, total)

    def blocks(self, shape: Sequence[int]) -> list[Block]:
        return self.variant.blocks(shape, self.options, self.n_samples, self.sampling.grid)

    def steps(self, block: Block) -> int:
        """Progress units of one block: sampler steps times tile samples, over every pass."""
        region = block.window.region if block.window is not None else None
        steps = sum(t.count_steps(h, w, region) for h, w in block.planes for t in self.tilers)
        if self.second_view is not None:
            steps += sum(self.second_view.count_steps(h, w, r) for h, w, r in block.estimate_planes)
        return steps

    def run(
        self, image: Any, block: Block, on_step: Callable[[int, int], None] | None = None, offset: int = 0, total: int | None = None
    ) -> BlockResult:
        """The block's arrays from ``image`` (numpy, dask or zarr: only ``block.source``, the
        part of the input the block declares, is read, once). ``on_step(done, total)`` after every sampler step, counting from ``offset`` (raise
        from it to cancel)."""
        total = total if total is not None else offset + self.steps(block)
        mean = np.zeros(block.shape, np.float32)
        spread = np.zeros(block.shape, np.float32)
        samples = np.zeros((self.n_samples, *block.shape), np.float32) if self.n_samples else None
        progress = {"offset": offset}

        def run_plane(read, h, w, out_mean, out_std, out_samples, plane_key=0, region=None) -> None:
            for tiler in self.tilers:
                # with a best estimate, the sampling pass gives only the spread (and the samples)
                target = _Discard() if tiler is self.sampling and len(self.tilers) > 1 else out_mean
                extra = (out_std, out_samples) if tiler is self.sampling else (None, None)
                tiler.run(read, h, w, target, *extra, plane_key, progress["offset"], total, region)
                progress["offset"] += tiler.count_steps(h, w, region)

        def estimate_plane(read, h, w, out, region, plane_key=0) -> None:
            self.second_view.run(read, h, w, out, None, None, plane_key, progress["offset"], total, region)
            progress["offset"] += self.second_view.count_steps(h, w, region)

        source = np.asarray(image[block.source])
        self._on_step = on_step
        try:
            with torch.inference_mode(), autocast(self.device, inference=True):
                self.variant.predict_block(source, block, self.options, BlockJob(self.normaliser, run_plane, mean, spread, samples, estimate_plane if self.second_view else None))
        finally:
            self._on_step = None
        return BlockResult(block, mean, spread, samples)


@dataclass
class BlockRun:
    """Which of a prediction's blocks are done (by index) and the one that failed for good
    (None while none has), kept by whatever runs them, in this process or through :mod:`.cluster`:
    the job says from it what it keeps and which block stopped it."""

    done: list[bool]
    failed: Block | None = None

    def __post_init__(self) -> None:
        self.before = sum(self.done)  # done by an earlier run (a resumed store)

    @property
    def ran(self) -> int:
        """Blocks this run finished."""
        return sum(self.done) - self.before


def write_block(result: BlockResult, mean: Any, spread: Any, samples: Any | None) -> None:
    """Put a block's arrays into the whole output's (numpy or zarr), converting the estimate and
    the samples to the output's dtype (clipped and rounded for integers)."""
    region = result.block.region
    mean[region] = _as(result.mean, mean.dtype)
    spread[region] = result.spread
    if samples is not None and result.samples is not None:
        samples[(slice(None), *region)] = _as(result.samples, samples.dtype)


def _as(values: np.ndarray, dtype: Any) -> np.ndarray:
    return values if np.dtype(dtype) == np.float32 else to_dtype(values, np.dtype(dtype))


def block_chunks(shape: Sequence[int], blocks: Sequence[Block]) -> tuple[int, ...]:
    """Chunks for an output cut into ``blocks`` such that every block owns whole chunks
    (concurrent writers never share one): :func:`..data.containers.default_chunks`, except along
    axes the blocks divide, where the chunk is the largest size every block boundary is a
    multiple of, up to :data:`..data.containers.CHUNK_PX`."""
    chunks = list(default_chunks(shape))
    for axis, n in enumerate(shape):
        cuts = {s for b in blocks for s in (b.region[axis].start, b.region[axis].stop)} - {0, int(n)}
        if cuts:
            step = math.gcd(*cuts)
            chunks[axis] = max(d for d in range(1, min(step, CHUNK_PX) + 1) if step % d == 0)
    return tuple(chunks)


def finished_region(blocks: Sequence[Block], done: Sequence[bool]) -> tuple[slice, ...] | None:
    """The part of the output the leading run of finished blocks covers (None: not even the
    first): the part a cancelled in-order run can keep as a partial image."""
    n = 0
    while n < len(blocks) and done[n]:
        n += 1
    if n == 0:
        return None
    if n == len(blocks):
        return ()
    first, last = blocks[0].region, blocks[n - 1].region
    return tuple(slice(a.start, b.stop) for a, b in zip(first, last))
