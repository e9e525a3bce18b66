"""Where a prediction goes: its names, claimed before computing, written when it ends.

``OUT.tif`` means ``OUT.tif`` (the mean), ``OUT_uncertainty.tif`` (and ``OUT_sample{k}.tif``),
written when the computation ends; ``OUT.zarr`` one store with arrays ``mean``, ``std`` (and
``samples``) filled tile by tile. Before anything is computed every name is checked (inputs,
existing files, ``overwrite``), locked and the free space measured (:mod:`..data.safe_output`).

A cancelled run keeps only finished planes: TIFFs named ``OUT.partial.tif`` /
``OUT_uncertainty.partial.tif``, or the store renamed ``OUT.partial.zarr`` with ``complete:
false`` and the number of finished planes. Nothing is left under the final names unless it is
complete; a killed run leaves at most a hidden temporary (``.OUT.zarr.tmp-PID-...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.safe_output import CREATED_BY, SOFTWARE, Lock, StagedStore, check_new_output, check_space, lock_beside
from ..errors import InputError

TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
STORE_SUFFIXES = (".zarr",)
PARTIAL = ".partial"


def split_suffix(path: Path) -> tuple[str, str]:
    """``denoised.ome.tif`` -> (``denoised``, ``.ome.tif``); unsupported suffixes are refused."""
    name = path.name
    for suffix in (*TIFF_SUFFIXES, *STORE_SUFFIXES):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    got = f"{path.suffix!r}" if path.suffix else "a name without a suffix"
    raise InputError(f"{path}: cannot write results as {got}; use one of {', '.join(sorted(TIFF_SUFFIXES + STORE_SUFFIXES, key=len))}")


@dataclass(frozen=True)
class OutputNames:
    """The files (or the store) one prediction writes."""

    store: bool
    mean: Path
    std: Path | None
    samples: tuple[Path, ...]

    @classmethod
    def for_path(cls, path: str | Path, n_samples: int = 0) -> "OutputNames":
        path = Path(path)
        stem, suffix = split_suffix(path)
        if suffix in STORE_SUFFIXES:
            return cls(True, path, None, ())
        named = lambda tail: path.with_name(f"{stem}{tail}{suffix}")  # noqa: E731
        return cls(False, path, named("_uncertainty"), tuple(named(f"_sample{k}") for k in range(n_samples)))

    def finals(self) -> list[Path]:
        return [p for p in (self.mean, self.std, *self.samples) if p is not None]

    @staticmethod
    def partial(path: Path) -> Path:
        stem, suffix = split_suffix(path)
        return path.with_name(f"{stem}{PARTIAL}{suffix}")


def in_memory(shape: tuple[int, ...], dtype: np.dtype, n_samples: int) -> tuple[Any, Any, Any]:
    """Zero-filled mean, std and samples (None without ``n_samples``) arrays."""
    samples = np.zeros((n_samples, *shape), dtype) if n_samples else None
    return np.zeros(shape, dtype), np.zeros(shape, np.float32), samples


def region_bounds(region: tuple[slice, ...], shape: Sequence[int]) -> list[list[int]]:
    """``[start, stop]`` per axis of the output that ``region`` (a variant's ``finished_region``) covers."""
    full = tuple(region) + (slice(None),) * (len(shape) - len(region))
    return [list(s.indices(int(n))[:2]) for s, n in zip(full, shape)]


def describe_bounds(bounds: Sequence[Sequence[int]], shape: Sequence[int]) -> str:
    """E.g. ``z 0:3 of 8``: the axes a partial result covers only in part."""
    axes = "zyx"[-len(shape) :]
    cut = [f"{ax} {a}:{b} of {n}" for ax, (a, b), n in zip(axes, bounds, shape) if (a, b) != (0, n)]
    return ", ".join(cut) or "all of it"


def describe_region(region: tuple[slice, ...], shape: Sequence[int]) -> str:
    return f"({describe_bounds(region_bounds(region, shape), shape)})"


class PredictionOutput:
    """One prediction's output, from the checks before the run to the files after it."""

    def __init__(self, path: str | Path, inputs: Sequence[Path | None], overwrite: bool, n_samples: int = 0) -> None:
        self.names = OutputNames.for_path(path, n_samples)
        self.inputs, self.overwrite = list(inputs), overwrite
        self.lock: Lock | None = None
        self.staged: StagedStore | None = None

    def claim(self, nbytes: int) -> None:
        """Refuse now, before computing, whatever would fail or destroy something at the end."""
        names = self.names.finals()
        every = names + [OutputNames.partial(p) for p in names]
        for p in every:
            check_new_output(p, self.inputs, self.overwrite)
        self.lock = lock_beside(self.names.mean, every).acquire()  # also proves the folder writable
        check_space(self.names.mean.parent, nbytes)

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype, n_samples: int, attrs: dict[str, Any]) -> tuple[Any, Any, Any]:
        """Arrays for mean, std and samples (None without ``n_samples``): in memory for TIFFs,
        in a store built beside the final one for zarr."""
        chunks = (1,) * (len(shape) - 2) + tuple(min(s, 512) for s in shape[-2:])
        if not self.names.store:
            return in_memory(shape, dtype, n_samples)
        import zarr

        self.staged = StagedStore(self.names.mean)
        group = zarr.open_group(str(self.staged.path), mode="w-")
        group.attrs.update({CREATED_BY: SOFTWARE, **attrs, "complete": False, "finished": None, "shape": list(shape)})
        mean = group.zeros(name="mean", shape=shape, dtype=dtype, chunks=chunks)
        std = group.zeros(name="std", shape=shape, dtype=np.float32, chunks=chunks)
        samples = group.zeros(name="samples", shape=(n_samples, *shape), dtype=dtype, chunks=(1, *chunks)) if n_samples else None
        return mean, std, samples

    def finish(
        self, mean: Any, std: Any, samples: Any, complete: bool, region: tuple[slice, ...] | None, voxel: Sequence[float], provenance: dict[str, Any]
    ) -> tuple[list[Path], tuple[Any, Any, Any]]:
        """Write what is complete: everything under the final names, or after a cancel the
        finished ``region`` (a variant's ``finished_region``; None: nothing) as partial TIFFs,
        or the whole store, marked incomplete, under its partial name. Returns the paths
        written and the result arrays (a store's arrays reopened where it now lies)."""
        shape = tuple(mean.shape)
        bounds = region_bounds(region, shape) if region is not None else None
        status = {"complete": complete, "finished": bounds, "shape": list(shape)}
        if self.names.store:
            return self._finish_store(complete, status)
        if region is None:
            return [], (mean, std, samples)
        where = (lambda p: p) if complete else OutputNames.partial  # noqa: E731
        from ..data.io import write_tiff

        about = {**provenance, **status}
        written = [write_tiff(where(self.names.mean), mean[region], voxel, self.inputs, provenance=about)]
        written.append(write_tiff(where(self.names.std), std[region], voxel, self.inputs, provenance={**about, "role": "uncertainty"}))
        for k, p in enumerate(self.names.samples):
            written.append(write_tiff(where(p), samples[k][region], voxel, self.inputs, provenance={**about, "role": f"sample {k}"}))
        return written, (mean, std, samples)

    def _finish_store(self, complete: bool, status: dict[str, Any]) -> tuple[list[Path], tuple[Any, Any, Any]]:
        import zarr

        assert self.staged is not None
        group = zarr.open_group(str(self.staged.path), mode="r+")
        group.attrs.update(status)
        path = self.staged.commit(None if complete else OutputNames.partial(self.names.mean))
        self.staged = None
        group = zarr.open_group(str(path), mode="r")
        return [path], (group["mean"], group["std"], group["samples"] if "samples" in group else None)

    def close(self) -> None:
        """Remove an unfinished temporary store and release the lock (also after an error)."""
        if self.staged is not None:
            self.staged.discard()
            self.staged = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
