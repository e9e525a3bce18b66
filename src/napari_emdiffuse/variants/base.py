"""What every variant answers, and the pieces they share.

A variant answers three questions (DESIGN.md): how training pairs are made from what the user
has (:meth:`Variant.training_pairs`); how a trained model runs over a whole image or volume, as
independent :class:`Block` s (:meth:`Variant.blocks`, :meth:`Variant.predict_block`); and how
the output's shape, voxel size and position follow from the input's
(:meth:`Variant.output_geometry`). The jobs do everything else: the predict job owns the loop
over blocks, in-process or on dask workers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..data.containers import CHUNK_PX
from ..data.normalise import Normaliser
from ..engine.grid import Rect, TileGrid
from ..errors import ConfigError, InputError


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Geometry:
    """Output shape (same number of axes as the input), voxel size (same order as the axes) and
    ``translation``: where the output's first pixel centre lies, in the input's physical units
    from the input's first pixel centre (not 0 where the output's pixels are smaller)."""

    shape: tuple[int, ...]
    voxel: tuple[float, ...]
    translation: tuple[float, ...] | None = None

    @property
    def origin(self) -> tuple[float, ...]:
        return self.translation if self.translation is not None else (0.0,) * len(self.shape)


@dataclass(frozen=True)
class Window:
    """The rectangle ``region`` of a plane that a block fills, and the rectangle ``span`` its
    tiles cover (what the tiler reads), both ``(y0, y1, x0, x1)`` in output pixels."""

    region: Rect
    span: Rect

    def crop(self, rows: "Base") -> "Base":
        """``rows(y0, y1)`` of the plane over the span's columns as rows of the region (rows
        and columns relative to it): a residual model's baseline, for :class:`PlaneWriter`."""
        y0, _, x0, x1 = self.region
        left = x0 - self.span[2]
        return lambda a, b: rows(a + y0, b + y0)[..., left : left + x1 - x0]


@dataclass(frozen=True)
class Block:
    """One independent piece of a prediction: the part ``region`` of the output (one slice per
    output axis), the ``(height, width)`` of every plane it samples (whole planes: for the tile
    grid and progress totals) and the part ``source`` of the input it needs (one slice per
    input axis, with the neighbouring slices or rows its condition reads): the runners read
    exactly that and hand it to :meth:`Variant.predict_block`, so a worker reads only what its
    block needs. ``window``: the block is a rectangle of one plane (a large 2D plane cut up).
    ``estimate_planes``: ``(height, width, region)`` of planes the block runs through the best
    estimate alone, for the ``region`` rectangle of each (a second view of the same output).

    A block's result depends only on the input and the block (sampler noise is keyed to image
    position), so blocks may run in any order, in any process, and be redone after a crash.
    """

    index: int
    region: tuple[slice, ...]
    planes: tuple[tuple[int, int], ...]
    source: tuple[slice, ...]
    window: Window | None = None
    estimate_planes: tuple[tuple[int, int, Rect], ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.region)


#: a plane larger than this (output pixels) on a side is cut into rectangular blocks of about
#: this size, so that one large montage spreads over workers and needs no worker to hold it
BLOCK_PX = 4096


def cuts(length: int) -> list[int]:
    """Block boundaries along one axis: about :data:`BLOCK_PX` apart, on multiples of
    :data:`CHUNK_PX` (each block owns whole chunks of the output)."""
    n = -(-length // BLOCK_PX)
    inner = {round(i * length / n / CHUNK_PX) * CHUNK_PX for i in range(1, n)} - {0, length}
    return [0, *sorted(inner), length]


def plane_windows(height: int, width: int, grid: TileGrid | None) -> list[Window | None]:
    """The rectangles a plane is cut into (row by row), or ``[None]``: the plane is one block
    (no ``grid``, or no side above :data:`BLOCK_PX`)."""
    if grid is None or max(height, width) <= BLOCK_PX:
        return [None]
    ys, xs = cuts(height), cuts(width)
    rects = [(y0, y1, x0, x1) for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]
    return [Window(r, grid.span(height, width, r)) for r in rects]


def plane_blocks(
    out_shape: Sequence[int], in_shape: Sequence[int], grid: TileGrid | None = None, source_of: Callable[[Rect], Rect] = lambda r: r
) -> list[Block]:
    """The blocks of a 2D variant: one per output plane (one for a 2D image), each reading its
    input plane (``in_shape``: the input's); with the sampler's tile ``grid``, planes larger
    than :data:`BLOCK_PX` are cut into rectangles, each reading the input its tiles span
    (``source_of``: the input rectangle an output rectangle needs; the same by default)."""
    h, w = int(out_shape[-2]), int(out_shape[-1])
    whole = (0, int(in_shape[-2]), 0, int(in_shape[-1]))
    planes = [()] if len(out_shape) == 2 else [(slice(z, z + 1),) for z in range(int(out_shape[0]))]
    blocks: list[Block] = []
    for z in planes:
        for window in plane_windows(h, w, grid):
            region = window.region if window else (0, h, 0, w)
            source = source_of(window.span) if window else whole
            blocks.append(Block(len(blocks), (*z, *_slices(region)), ((h, w),), (*z, *_slices(source)), window))
    return blocks


def _slices(rect: Rect) -> tuple[slice, slice]:
    return slice(rect[0], rect[1]), slice(rect[2], rect[3])


def plane_of(block: Block) -> int:
    """The plane (z) a block of a 2D variant lies in: the key of its sampler noise."""
    return int(block.region[0].start) if len(block.region) == 3 else 0


@dataclass(frozen=True)
class Roi:
    """A rectangle ``[y0, y1) x [x0, x1)`` in input pixels (e.g. drawn in a Shapes layer)."""

    y0: int
    y1: int
    x0: int
    x1: int

    def __str__(self) -> str:
        return f"y {self.y0}:{self.y1}, x {self.x0}:{self.x1}"

    def clip(self, height: int, width: int) -> "Roi":
        r = Roi(max(0, self.y0), min(height, self.y1), max(0, self.x0), min(width, self.x1))
        if r.y1 <= r.y0 or r.x1 <= r.x0:
            raise InputError(f"the region {self} lies outside the image ({height} x {width})")
        return r


class PairSource(ABC):
    """Training pairs for one split: ``sample(rng, n, patch) -> (cond, target)`` as float32
    arrays of shape ``(n, C, patch, patch)``, already normalised and augmented. ``patch`` is
    the patch size that fits the split's region (at most the one asked for)."""

    summary: dict[str, Any]
    patch: int

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int, patch: int) -> tuple[np.ndarray, np.ndarray]: ...

    def as_image(self, cond: np.ndarray, target: np.ndarray) -> np.ndarray:
        """A target-shaped array (a target, or what the network made of ``cond``) as the image it
        stands for, e.g. for previews."""
        return target

    def baseline(self, cond: np.ndarray) -> np.ndarray | None:
        """The image a method without the network gives for ``cond`` (e.g. interpolation), scored
        as the "input" PSNR beside validation; None where the job's default applies."""
        return None


class PatchPairs(PairSource):
    """A pair source that draws its ``n`` pairs one at a time (``_one``) and stacks them."""

    @abstractmethod
    def _one(self, rng: np.random.Generator, patch: int) -> tuple[np.ndarray, np.ndarray]: ...

    def sample(self, rng: np.random.Generator, n: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self._one(rng, patch) for _ in range(n)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class ResidualPairs(PairSource):
    """Pairs whose target is the difference between the true target and an interpolation
    ``baseline(cond)`` (bicubic upsampling, linear interpolation between slices).

    The network then generates only what interpolation misses: an untrained model already gives
    the baseline, and training time goes into the detail. Prediction adds the baseline back
    (``PlaneWriter(..., base=...)``).
    """

    def __init__(self, source: PairSource, baseline: Callable[[np.ndarray], np.ndarray]) -> None:
        self.source, self._baseline = source, baseline
        self.patch, self.summary = source.patch, {**source.summary, "target": "difference from the interpolation baseline"}

    def sample(self, rng: np.random.Generator, n: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
        cond, target = self.source.sample(rng, n, patch)
        return cond, np.ascontiguousarray(target - self._baseline(cond), dtype=np.float32)

    def as_image(self, cond: np.ndarray, target: np.ndarray) -> np.ndarray:
        return target + self._baseline(cond)

    def baseline(self, cond: np.ndarray) -> np.ndarray:
        return self._baseline(cond)


Base = Callable[[int, int], np.ndarray]
"""``base(y0, y1) -> (C, y1 - y0, W)``: rows of a residual model's baseline, normalised."""


class PlaneWriter:
    """Lets the tiler write ``(C, rows, W)`` blocks into ``C`` consecutive planes of a 3D output
    (numpy or zarr), mapped through ``transform`` (the inverse normalisation); ``base`` adds
    the baseline of a residual model (:class:`ResidualPairs`) first."""

    def __init__(
        self, target, start: int, transform: Callable[[np.ndarray], np.ndarray], samples: bool = False, base: Base | None = None
    ):
        self.target, self.start, self.transform, self.samples, self.base = target, start, transform, samples, base

    def __setitem__(self, key: tuple, value: np.ndarray) -> None:
        rows = key[-1]
        c = value.shape[-3]
        if self.base is not None:
            value = value + self.base(rows.start, rows.stop)
        v = self.transform(value)
        if len(self.target.shape) == (3 if self.samples else 2):  # a 2D output (or 2D samples)
            self.target[(slice(None),) * self.samples + (rows,)] = v[..., 0, :, :]
        else:
            self.target[(slice(None),) * self.samples + (slice(self.start, self.start + c), rows)] = v


@dataclass
class BlockJob:
    """What the predict job hands a variant to fill one block: the image's ``normaliser``, the
    runner's ``sample_plane(read, height, width, mean, std, samples, plane_key)`` (every
    sampler pass over one plane, into three tiler targets) and the block's arrays, zero on
    entry, in the input's intensity units: ``mean`` and ``std`` of ``block.shape``, ``samples``
    of ``(K, *block.shape)`` or None. ``estimate_plane(read, height, width, out, region, plane_key)`` runs
    the best estimate alone over the ``region`` of one plane (for ``Block.estimate_planes``);
    None where the output is the mean of the samples."""

    normaliser: Normaliser
    sample_plane: Callable[..., None]
    mean: np.ndarray
    std: np.ndarray
    samples: np.ndarray | None
    estimate_plane: Callable[..., None] | None = None

    def run(
        self, read: Base, height: int, width: int, start: int = 0, base: Base | None = None, plane_key: int = 0, window: Window | None = None
    ) -> None:
        """Sample one plane (``read(y0, y1) -> (C, rows, W)``, normalised) into the ``C`` planes
        from ``start`` of the block's arrays, adding a residual model's ``base`` to the estimate
        and the samples. With a ``window`` only its region is sampled, into arrays of its size;
        ``read`` and ``base`` then give the rows of the span's columns only."""
        n = self.normaliser
        if window is not None and base is not None:
            base = window.crop(base)
        self.sample_plane(
            read,
            height,
            width,
            PlaneWriter(self.mean, start, n.inverse, base=base),
            PlaneWriter(self.std, start, n.scale_std),
            PlaneWriter(self.samples, start, n.inverse, samples=True, base=base) if self.samples is not None else None,
            plane_key=plane_key,
            region=window.region if window is not None else None,
        )


def augment(cond: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random flip and 90-degree rotation of both arrays (last two axes)."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in (cond, target):
        a = np.rot90(a, k, axes=(-2, -1))
        out.append(np.ascontiguousarray(a[..., ::-1] if flip else a))
    return out[0], out[1]


def split_rows(height: int, val_fraction: float, patch: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Train and validation row ranges: validation is a strip at the bottom, never overlapping."""
    val_h = max(round(val_fraction * height), min(patch, height // 3))
    val_h = min(val_h, height // 2)
    return (0, height - val_h), (height - val_h, height)


@dataclass(frozen=True)
class Split:
    """Which training pairs to make: ``name`` "train" or "val" (validation is a strip of
    ``val_fraction`` of the rows at the bottom, never overlapping training), or "all" (a set
    whose validation data is held out elsewhere); ``patch`` is the patch size asked for (target
    pixels), ``roi`` a rectangle to keep to, ``min_std`` the flattest target a patch may have."""

    name: str
    val_fraction: float
    patch: int
    roi: Roi | None = None
    min_std: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ("train", "val", "all"):
            raise ValueError(f"split {self.name!r}: expected 'train', 'val' or 'all'")

    def rows(self, height: int, scale: int = 1) -> tuple[int, int]:
        """The split's row range in a region ``height`` rows high (of input pixels, ``scale``
        times coarser than the target's)."""
        if self.name == "all":
            return 0, height
        train, val = split_rows(height, self.val_fraction, self.patch // scale)
        return train if self.name == "train" else val

    def fit_patch(self, name: str, plane: Sequence[int], rows: tuple[int, int], cols: tuple[int, int], scale: int = 1, least: int = 16) -> int:
        """The largest multiple of 16 not above the patch size asked for that fits the region
        ``rows`` x ``cols`` (input pixels; the patch in target pixels, ``scale`` per input
        pixel). A region without room for ``least`` is refused naming the image by its role
        ``name`` (which :func:`..errors.naming` turns into its file), its ``plane`` size, the
        region and ``train.patch_size``: a small image must not fail as an anonymous region."""
        height, width = rows[1] - rows[0], cols[1] - cols[0]
        fitted = min(self.patch, min(height, width) * scale // 16 * 16)
        if fitted >= least:
            return fitted
        region = f" of the region {self.roi}" if self.roi else ""
        part = {
            "train": "it trains on (the bottom rows are held out for validation)",
            "val": "held out for validation (the bottom rows)",
            "all": "it trains on",
        }[self.name]
        patch = f"a {least} px patch" if scale == 1 else f"a {least} px target patch, {least // scale} px of the input at factor {scale}"
        raise InputError(
            f"{name} has planes of {plane[-2]} x {plane[-1]} px; the {height} x {width} px{region} {part} is too small for {patch} "
            f"(train.patch_size {self.patch} shrinks to fit, but not below {least} px): give larger images{' or a larger region' if self.roi else ''}"
        )


class Variant(ABC):
    """One EMDiffuse variant; subclasses are small and stateless."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    #: the arrays training needs, e.g. ("input", "target") for paired variants or ("volume",)
    training_inputs: ClassVar[tuple[str, ...]]
    #: what a user would do without the model (the image validation scores the model against)
    baseline_name: ClassVar[str] = "the input"
    #: dimensionality of images :meth:`predict` accepts
    input_ndims: ClassVar[tuple[int, ...]] = (2, 3)
    options_model: ClassVar[type[BaseModel]] = NoOptions
    #: how the error grows with the input's noise (``error ~ noise ** exponent``), for bounds on
    #: inputs noisier than the calibration data (:func:`..uncertainty.widening`): 1 where the truth
    #: comes from the same acquisition as the input, so its own noise grows alike
    noise_exponent: ClassVar[float] = 1.0

    def options(self, raw: dict[str, Any] | BaseModel | None) -> BaseModel:
        """Validated options; a bad one raises :class:`ConfigError` naming the option and the fix."""
        if isinstance(raw, self.options_model):
            return raw
        try:
            return self.options_model(**(raw or {}))
        except ValidationError as err:
            parts = []
            for e in err.errors():
                key = ".".join(str(p) for p in e["loc"]) or "options"
                msg = e["msg"].removeprefix("Value error, ")
                if e["type"] == "extra_forbidden":
                    msg = f"unknown option; {self.title} takes {', '.join(self.options_model.model_fields) or 'no options'}"
                parts.append(f"{key}: {msg}")
            raise ConfigError(f"{self.title}: " + "; ".join(parts)) from None

    @abstractmethod
    def channels(self, options: BaseModel) -> tuple[int, int]:
        """``(out_channels, cond_channels)`` of the network."""

    @abstractmethod
    def output_geometry(self, shape: Sequence[int], voxel: Sequence[float], options: BaseModel) -> Geometry: ...

    @abstractmethod
    def training_pairs(self, arrays: dict[str, Any], options: BaseModel, split: Split) -> PairSource:
        """Pairs for ``split`` from the user's arrays (numpy or dask)."""

    @abstractmethod
    def blocks(self, shape: Sequence[int], options: BaseModel, samples: int = 0, grid: TileGrid | None = None) -> list[Block]:
        """The independent blocks that together cover the output of an input of ``shape``, in
        the order the output fills (``samples``: how many samples are kept, which sizes blocks
        that buffer in memory; ``grid``: the sampler's tiles, by which a large plane is cut)."""

    @abstractmethod
    def predict_block(self, source: np.ndarray, block: Block, options: BaseModel, job: "BlockJob") -> None:
        """Fill the block's arrays (``job.mean``, ``job.std``, ``job.samples``) by sampling its
        planes through the job (:meth:`BlockJob.run`) from ``source``: the input's
        ``block.source``, already read (indices relative to its start)."""

    def option_phrases(self, options: BaseModel) -> list[str]:
        """What a model's options (fixed when it was trained) make it do, as short phrases for
        a user who does not know the option names: the widgets' model line and ``emdiffuse
        models`` show them. A variant words its own, leaving out what every model of it does;
        this fallback names each option and its value, so a variant added later shows them too."""
        return [f"{key.replace('_', ' ')} {value}" for key, value in options.model_dump().items()]

    def original_phrase(self) -> str:
        """The phrase for an ``emdiffuse_original`` option: the network is driven as the original
        code drives it, which is what imported published weights need."""
        return f"run as the original {self.title.split(' (')[0]} code runs it (imported weights)"

    def pixel_factor(self, options: BaseModel) -> int:
        """How many times finer the target's pixels are than the input's in y and x (1: the same
        grid); a prepared set cuts its patches and records its target voxel size by it."""
        return 1

    def voxel_warning(self, voxel: Sequence[float], options: BaseModel) -> str | None:
        """A warning when the input's voxel size does not suit the model (None: nothing to say)."""
        return None

    def from_clean(self, clean: np.ndarray, options: BaseModel, **degradation: Any) -> dict[str, Any]:
        """Training arrays simulated from clean data alone (the degradation's parameters vary by variant)."""
        raise InputError(f"{self.title} cannot be trained from clean images alone")

    def calibration_pair(self, clean: np.ndarray, options: BaseModel, **degradation: Any) -> tuple[np.ndarray, np.ndarray]:
        """An input for :meth:`predict_block` and the truth its ideal output is, simulated from
        clean data (to calibrate a model's intervals on a region the user trusts): by default the
        training degradation of :meth:`from_clean`."""
        arrays = self.from_clean(clean, options, **degradation)
        return arrays["input"], arrays["target"]

    def calibration_voxel(self, voxel: Sequence[float], options: BaseModel) -> tuple[float, ...]:
        """The voxel size of :meth:`calibration_pair`'s input, from the clean data's: coarser
        in y and x by :meth:`pixel_factor`, none made up (:func:`..data.image.coarsened`)."""
        from ..data.image import coarsened

        return coarsened(voxel, self.pixel_factor(options))

    def check_input(self, image: Any, options: BaseModel, name: str = "image") -> None:
        from ..data.normalise import check_image

        check_image(image, name, self.input_ndims)
