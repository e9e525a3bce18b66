"""Where a prediction goes: its names, claimed before computing, written as it runs or ends.

``OUT.tif`` means ``OUT.tif`` (the estimate), ``OUT_uncertainty.tif``, for a calibrated model
``OUT_lower.tif`` / ``OUT_upper.tif`` (and ``OUT_sample{k}.tif``), written when the computation
ends. ``OUT.zarr`` is an OME-Zarr 0.5 store filled block by block: one image per result
(``mean``, ``uncertainty``, ``lower``, ``upper``, ``samples``, each with its scale, units and
translation), a done-marker per block (``.blocks_done``) and, until it ends, the samples'
raw spread (``.spread``) from which the uncertainty is pooled (removed only once the complete
store is in place: a store under any other name keeps all of it). Before anything is computed every
name is checked (inputs, existing files, ``overwrite``), locked and the free space measured
(:mod:`..data.safe_output`).

A cancelled run keeps only finished blocks: TIFFs named ``OUT.partial.tif`` ..., or the store
renamed ``OUT.partial.zarr`` with ``complete: false``; so does a run stopped by a block that
failed for good, which then ends in a :class:`..errors.BlockError` saying so
(:func:`block_failure`; a TIFF, written at the end, has nothing to keep); a killed run, or one
whose store could not even be finished, leaves its store under a hidden temporary name
(``.OUT.zarr.tmp-PID-...``), as does one whose rename into place failed after it was pooled
(``complete: true``). ``resume`` continues either, computing only the blocks not marked done (a
pooled store is renamed into place as it is), and refuses a store made with another model, input
or settings; of several killed runs' stores it continues the newest and names the others, which
it leaves as they are.

Every run names itself in its store (the root attribute ``run``, new for each run, a resumed
store's rewritten): cluster workers write a block only while the store at their path is still
their run's (:func:`check_run`), so a worker of a run that has ended (its client killed, the run
resumed or started again) never writes into another run's store. A dead run's store that a new run
discards is first renamed (``...removing``, in one step) and then removed, so that it vanishes
from its path at once rather than file by file under its workers. A worker whose store left while
it wrote may have made folders of chunk files again at the old path: the worker removes them,
and the next run of the output removes any a killed worker left (a folder of our temporary name
form, of a process no longer running, holding nothing but chunk files: no store's metadata).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.safe_output import CREATED_BY, SOFTWARE, Lock, StagedStore, check_new_output, check_space, lock_beside, own_attrs, pid_alive, replacing_set
from ..errors import BlockCancelledOnCluster, BlockError, InputError, StaleRunError
from ..data.containers import CHUNK_PX
from ..data.formats import file_stem
from ..uncertainty import POOL_PX, ErrorModel
from ..variants.base import Block, Geometry
from .blocks import block_chunks

log = logging.getLogger(__name__)

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


def role_key(role: str | None) -> str:
    """The array of a store that holds what a TIFF part of the role ``role`` (as its provenance
    records it) holds: None (the estimate) ``mean``, "lower bound" ``lower``, "sample 2" itself."""
    return "mean" if role is None else role.removesuffix(" bound")


def tiff_tail(role: str | None) -> str:
    """What a part of a TIFF result adds to ``OUT`` in its name, by the role its provenance records:
    None (the estimate) nothing, "uncertainty" ``_uncertainty``, "lower bound" ``_lower``,
    "sample 2" ``_sample2``."""
    return "" if role is None else "_" + role_key(role).replace(" ", "")


def role_of_tail(stem: str) -> str | None:
    """The role whose :func:`tiff_tail` ends ``stem`` (``OUT_lower``: "lower bound"; ``OUT_sample2``:
    "sample 2"); None where it ends in none (``_sample03`` is no tail predict writes)."""
    for role in ("uncertainty", "lower bound", "upper bound"):
        if stem.endswith(tiff_tail(role)) and len(stem) > len(tiff_tail(role)):
            return role
    sample = re.fullmatch(r"(.+)_sample(0|[1-9]\d*)", stem)
    return f"sample {int(sample[2])}" if sample else None


def result_stem(path: Path, role: str | None = None) -> str:
    """``OUT`` of a result as the reader names its layers: a store's name, or a TIFF part's by its
    ``role`` (``OUT_uncertainty.partial.tif``: ``OUT``), less the suffix of its format, whichever
    the reader takes (:func:`..data.formats.file_stem`; ``.btf`` too, which predict does not write)."""
    stem = file_stem(path).removesuffix(PARTIAL)
    return stem.removesuffix(tiff_tail(role)) or stem


@dataclass(frozen=True)
class OutputNames:
    """The files (or the store) one prediction writes."""

    store: bool
    mean: Path
    std: Path | None
    samples: tuple[Path, ...]
    bounds: tuple[Path, ...] = ()

    @classmethod
    def for_path(cls, path: str | Path, n_samples: int = 0, bounds: bool = False) -> "OutputNames":
        path = Path(path)
        stem, suffix = split_suffix(path)
        if suffix.lower() in STORE_SUFFIXES:  # as the reader and write_image take a name: OUT.ZARR is a store
            return cls(True, path, None, ())
        named = lambda role: path.with_name(f"{stem}{tiff_tail(role)}{suffix}")  # noqa: E731
        samples = tuple(named(f"sample {k}") for k in range(n_samples))
        return cls(False, path, named("uncertainty"), samples, (named("lower bound"), named("upper bound")) if bounds else ())

    def finals(self) -> list[Path]:
        return [p for p in (self.mean, self.std, *self.bounds, *self.samples) if p is not None]

    def companions(self) -> list[Path]:
        """The files beside a TIFF result that an earlier prediction under its name may have
        written (its uncertainty, bounds and samples), whichever this one writes."""
        if self.store:
            return []
        stem, suffix = split_suffix(self.mean)
        named = [self.mean.with_name(f"{stem}{tiff_tail(role)}{suffix}") for role in ("uncertainty", "lower bound", "upper bound")]
        pattern = re.compile(re.escape(stem) + r"_sample\d+" + re.escape(suffix) + "$")
        return named + sorted(p for p in self.mean.parent.glob(f"{glob.escape(stem)}_sample*{suffix}") if pattern.fullmatch(p.name))

    @staticmethod
    def partial(path: Path) -> Path:
        stem, suffix = split_suffix(path)
        return path.with_name(f"{stem}{PARTIAL}{suffix}")


def in_memory(shape: tuple[int, ...], dtype: np.dtype, n_samples: int) -> tuple[Any, Any, Any]:
    """Zero-filled mean, std and samples (None without ``n_samples``) arrays."""
    samples = np.zeros((n_samples, *shape), dtype) if n_samples else None
    return np.zeros(shape, dtype), np.zeros(shape, np.float32), samples


def region_bounds(region: tuple[slice, ...], shape: Sequence[int]) -> list[list[int]]:
    """``[start, stop]`` per axis of the output that ``region`` (:func:`.blocks.finished_region`) covers."""
    full = tuple(region) + (slice(None),) * (len(shape) - len(region))
    return [list(s.indices(int(n))[:2]) for s, n in zip(full, shape)]


def describe_bounds(bounds: Sequence[Sequence[int]], shape: Sequence[int]) -> str:
    """E.g. ``z 0:3 of 8``: the axes a partial result covers only in part."""
    axes = "zyx"[-len(shape) :]
    cut = [f"{ax} {a}:{b} of {n}" for ax, (a, b), n in zip(axes, bounds, shape) if (a, b) != (0, n)]
    return ", ".join(cut) or "all of it"


def describe_compute(compute: dict[str, Any]) -> str:
    """Where and in what precision a prediction's network ran, from its provenance's ``compute``."""
    if "parts" in compute:
        return "in parts: " + "; ".join(describe_compute(c) for c in compute["parts"])
    if compute.get("cluster"):
        return f"on the cluster {compute['cluster']} (device {compute.get('device', '?')} on each worker, each in its own precision)"
    return f"on {compute.get('device', '?')}, network in {compute.get('network', '?')}"


def describe_region(region: tuple[slice, ...], shape: Sequence[int]) -> str:
    return f"({describe_bounds(region_bounds(region, shape), shape)})"


#: the arrays of a store that are not results: block done-markers, the samples' raw spread
DONE, SPREAD = ".blocks_done", ".spread"
#: the root attribute naming the run that writes a store (see the module docstring)
RUN = "run"
#: the name a dead run's store is given while it is removed (after its own)
REMOVING = ".removing"
#: pixels of a plane pooled at once (about): a strip of rows, so that no plane need fit in memory
POOL_STRIP_PX = 1 << 24
#: rows a strip reads beyond its own so that it pools as the whole plane does: the pooling
#: window's reach, and the error model's Laplacian's (one row) under it
POOL_HALO = POOL_PX // 2 + 1


def result_bytes(shape: Sequence[int], dtype: np.dtype, n_samples: int, bounds: bool) -> int:
    """What a result of ``shape`` takes: the mean (and each kept sample) in ``dtype``, and the
    float32 uncertainty (and, for a calibrated model, the float32 lower and upper bounds)."""
    return int(np.prod(shape)) * (np.dtype(dtype).itemsize * (1 + n_samples) + 4 * (3 if bounds else 1))


def pool_uncertainty(
    mean: Any, spread: Any, q: float | None, uncertainty: Any, lower: Any = None, upper: Any = None, error: ErrorModel = ErrorModel()
) -> None:
    """Plane by plane, in strips of rows (numpy or zarr): the samples' spread pooled into the
    error map (:func:`..uncertainty.error_map`, then the model's :class:`..uncertainty.ErrorModel`)
    and, with a calibration scale ``q``, the interval ``mean -+ q u``."""
    from .. import uncertainty as unc

    height, width = spread.shape[-2:]
    rows = max(1, POOL_STRIP_PX // width // CHUNK_PX) * CHUNK_PX  # whole chunks of the store
    planes = [()] if len(spread.shape) == 2 else [(z,) for z in range(spread.shape[0])]
    for z, y0 in ((z, y0) for z in planes for y0 in range(0, height, rows)):
        y1 = min(height, y0 + rows)
        a, b = max(0, y0 - POOL_HALO), min(height, y1 + POOL_HALO)
        m = np.asarray(mean[(*z, slice(a, b))], np.float32)
        u = error(unc.error_map(np.asarray(spread[(*z, slice(a, b))])), m)[y0 - a : y1 - a] * np.float32(error.plane(z))
        strip = (*z, slice(y0, y1))
        uncertainty[strip] = u
        if q is not None:
            m = m[y0 - a : y1 - a]
            lower[strip], upper[strip] = m - q * u, m + q * u


def finish_in_memory(
    mean: np.ndarray, spread: np.ndarray, samples: Any, q: float | None, error: ErrorModel = ErrorModel()
) -> tuple[Any, Any, Any, Any, Any]:
    """An in-memory result: the spread pooled into the error map, and the interval."""
    lower, upper = (np.zeros(mean.shape, np.float32), np.zeros(mean.shape, np.float32)) if q is not None else (None, None)
    uncertainty = np.zeros(spread.shape, np.float32)
    pool_uncertainty(mean, spread, q, uncertainty, lower, upper, error)
    return mean, uncertainty, samples, lower, upper


def ome_image_attrs(name: str, voxel: Sequence[float], origin: Sequence[float], lead: str | None = None) -> dict[str, Any]:
    """OME-Zarr 0.5 metadata of a one-level image ``name`` with spatial axes of ``voxel`` µm, its
    first pixel at ``origin`` µm; ``lead`` names a leading non-spatial axis (the samples)."""
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"[-len(voxel) :]]
    scale, shift = [float(v) for v in voxel], [float(o) for o in origin]
    if lead:
        axes, scale, shift = [{"name": lead, "type": "channel"}, *axes], [1.0, *scale], [0.0, *shift]
    transforms = [{"type": "scale", "scale": scale}, {"type": "translation", "translation": shift}]
    multiscale = {"name": name, "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}
    return {"ome": {"version": "0.5", "multiscales": [multiscale]}}


def _made_by_us(path: Path) -> bool:
    """Whether a TIFF carries our provenance tag (a file we wrote, not one a user named alike)."""
    import tifffile

    from ..data.tiff import tiff_provenance

    try:
        with tifffile.TiffFile(path) as tf:
            return bool(tiff_provenance(tf))
    except Exception:  # noqa: BLE001 - not a readable TIFF: not ours
        return False


def blocks_done(store: Path) -> int | None:
    """How many blocks a store finished: 0 for one without block markers (nothing to resume),
    None where its markers are there but cannot be read (a disk error). Whether a store may be
    deleted is decided by this count, so only a known 0 means nothing is lost: a caller keeps a
    store whose count is None."""
    import zarr

    try:
        os.stat(store / DONE)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    except OSError:
        return None
    try:
        return int(np.count_nonzero(zarr.open_array(str(store / DONE), mode="r")[:]))
    except Exception:  # noqa: BLE001 - broken markers: unknown, not none
        return None


def _dead_temps(final: Path) -> list[Path]:
    """Stores a killed run left under a hidden temporary name beside ``final`` (``.NAME.tmp-PID-...``,
    the name taken literally, whatever characters it holds; a process still running is not dead).
    Our temporaries always carry a process number: a folder named otherwise is not one of them
    (its ``...removing`` copy is removed without a look inside, see :func:`_discard`)."""
    found = []
    for p in final.parent.glob(f"{glob.escape('.' + final.name)}.tmp-*"):
        pid = p.name[len(final.name) + 6 :].split("-", 1)[0]
        if p.is_dir() and pid.isdigit() and not (int(pid) != os.getpid() and pid_alive(int(pid))):
            found.append(p)
    return found


#: the arrays blocks are written into (:func:`open_block_arrays`), and what writing a block makes
#: below them: chunk files (``NAME.HEX.partial`` while zarr writes one) and the folders on their way
_ARRAYS = "|".join(re.escape(a) for a in ("mean/0", "samples/0", SPREAD, DONE))
_CHUNK_FILE = re.compile(rf"({_ARRAYS})/c(/\d+)+(\.[0-9a-f]{{32}}\.partial)?")
_CHUNK_FOLDER = re.compile(rf"mean|samples|({_ARRAYS})(/c(/\d+)*)?")


def _only_block_writes(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but what block writes make (no store's metadata, so no
    run's id: no run can resume it), as a cluster worker of an ended run leaves at its store's old
    path when the store was moved away while it wrote (see :func:`check_run`). A folder holding
    anything else, a link included, is not one of these; nor is one that changes while it is looked
    through (another worker removing it): left to the next run's look (:meth:`PredictionOutput.claim`)."""
    try:
        for p in folder.rglob("*"):
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink() or not (_CHUNK_FOLDER if p.is_dir() else _CHUNK_FILE).fullmatch(rel):
                return False
    except OSError:
        return False
    return True


def clear_stale_writes(path: Path) -> None:
    """On a cluster worker, after its block: if the store it wrote into has left ``path`` (the run
    ended, was resumed or started again) and its writes made folders there again, remove them.
    Never raises: it runs after the block's own outcome (a :class:`StaleRunError` or an error of
    the block), which is what the client must see; what it cannot remove the next run does."""
    try:
        if path.is_dir() and own_attrs(path) is None and _only_block_writes(path):
            _discard(path)
    except OSError as err:
        log.info("%s: left for the next run to remove (%s)", path, err)


def _discard(store: Path) -> None:
    """Remove a dead run's store: renamed first, in one step, so that a worker of that run still
    running finds no store at its path (:func:`check_run`) instead of one half removed; the new name
    keeps the dead run's temporary one in front, so a removal cut short is finished by the next run."""
    trash = store if store.name.endswith(REMOVING) else store.with_name(store.name + REMOVING)
    try:
        os.replace(store, trash)
    except OSError:  # gone meanwhile (another run took it over), or the folder cannot be moved: removed in place
        trash = store
    shutil.rmtree(trash, ignore_errors=True)


class PredictionOutput:
    """One prediction's output, from the checks before the run to the files after it.

    ``bounds``: the model is calibrated, so ``lower`` / ``upper`` are written too. ``resume``
    (stores only): continue a store this output left unfinished (see the module docstring).
    """

    def __init__(
        self, path: str | Path, inputs: Sequence[Path | None], overwrite: bool, n_samples: int = 0, bounds: bool = False, resume: bool = False
    ) -> None:
        self.names = OutputNames.for_path(path, n_samples, bounds)
        self.inputs, self.overwrite, self.bounds, self.resume = list(inputs), overwrite, bounds, resume
        self.lock: Lock | None = None
        #: companions of an earlier result under this name that this one will not write (its
        #: other samples, its bounds): replaced with it under --overwrite, so none is left stale
        self.stale: list[Path] = []
        #: a stopped run's unfinished result of this output that a finished ``overwrite`` run removed
        self.superseded: list[Path] = []
        self.staged: StagedStore | None = None
        self.resumable: Path | None = None
        #: other killed runs' stores beside the one resumed (older ones): kept as they are, not continued (:meth:`passed_over_note`)
        self.passed_over: list[Path] = []
        self.done: Any = None
        #: this run's name in its store (:func:`check_run`)
        self.run = uuid.uuid4().hex
        #: on a resume whose earlier runs computed in another way (device, precision): those ways
        self.computed_before: list[dict[str, Any]] = []
        #: how this run computes, still to be added to a resumed store's ``compute`` (:meth:`record_compute`)
        self._compute: dict[str, Any] | None = None
        #: the store held a finished block at some time in this run: never removed by :meth:`close`
        self.held = False
        #: the resumed store was finished and pooled already (``complete: true`` under a temporary
        #: name: its rename failed, or the run was killed after pooling): committed as it is
        self.pooled = False
        #: such a store's interval record (``bounds``): the one it keeps, whatever this run's alpha
        self.pooled_bounds: dict[str, Any] | None = None

    def claim(self, nbytes: int) -> None:
        """Refuse now, before computing, whatever would fail or destroy something at the end;
        with ``resume``, find the unfinished store to continue (:attr:`resumable`)."""
        if self.resume and not self.names.store:
            raise InputError(f"{self.names.mean}: --resume continues a zarr output (OUT.zarr); a TIFF is written only at the end")
        names = self.names.finals()
        every = names + [OutputNames.partial(p) for p in names]
        partial = OutputNames.partial(self.names.mean)
        folder = next((p for p in names if not self.names.store and p.is_dir()), None)
        if folder is not None:  # found now, not at the rename after all the computing
            raise InputError(f"{folder}: is a folder; a TIFF result needs a file name there (or write OUT.zarr)")
        self.stale = [p for p in self.names.companions() if p not in names]
        for p in self.stale:  # removed with --overwrite only when we made it: a name alone says nothing
            if p.is_file() and not _made_by_us(p):
                raise InputError(f"{p}: named like a part of this result but not written by {SOFTWARE}; move or rename it, or choose another output name")
        if self.resume and not self.overwrite and self.names.store and (done := complete_refusal(self.names.mean)):
            raise InputError(done)
        if not (self.resume or self.overwrite or any(p.exists() for p in names)) and (stopped := stopped_run_refusal(self.names.mean)):
            # a stopped run's store (and no result it could become, which is refused first, below)
            raise InputError(stopped)
        for p in every + self.stale:
            if not (self.resume and p == partial):
                check_new_output_beside(p, self.names.mean, self.inputs, self.overwrite)
        # taking over a dead run's lock removes its temporaries, except a store it was writing:
        # its finished blocks are work a user may want to resume, decided below
        cleared = [p for p in every if not (self.names.store and p == self.names.mean)]
        self.lock = lock_beside(self.names.mean, cleared).acquire()  # also proves the folder writable
        dead = _dead_temps(self.names.mean)  # with the lock held
        killed = _killed_stores(self.names.mean, dead)
        if self.resume and killed and partial.is_dir():  # resuming one would replace the other when the run stops
            self.close()
            raise InputError(_which_to_resume(partial, killed))
        if self.resume:
            self.resumable = partial if partial.is_dir() else killed[0] if killed else None
            self.passed_over = killed[1:]
        elif killed and not self.overwrite:
            self.close()
            raise InputError(_killed_runs_left(self.names.mean, killed))
        for store in dead:
            # a folder of ours only, whatever its name (a removal cut short is ours): asked to start again, or no block of it was
            # finished; and, resuming too, the writes an ended run's worker left at its store's old path, which no run resumes
            ours = store.name.endswith(REMOVING) or own_attrs(store) is not None or not any(store.iterdir())
            if (ours and not self.resume) or (store != self.resumable and _only_block_writes(store)):
                _discard(store)
        check_space(self.names.mean.parent, nbytes)

    def allocate(
        self, shape: tuple[int, ...], dtype: np.dtype, n_samples: int, attrs: dict[str, Any], blocks: Sequence[Block], geometry: Geometry
    ) -> tuple[Any, Any, Any, list[bool]]:
        """Arrays for mean, spread and samples (None without ``n_samples``) and which blocks are
        already done: in memory for TIFFs; for zarr an OME-Zarr store built beside the final
        one (or the resumed store, whose ``attrs["resume_key"]`` must match), chunked so that
        each block owns whole chunks."""
        if not self.names.store:
            return (*in_memory(shape, dtype, n_samples), [False] * len(blocks))
        import zarr

        self.staged = StagedStore(self.names.mean)
        if self.resumable is not None:
            _check_resumable(self.resumable, attrs["resume_key"], len(blocks))
            os.rmdir(self.staged.path)
            os.rename(self.resumable, self.staged.path)
            group = zarr.open_group(str(self.staged.path), mode="r+")
            # pooled, its raw spread may be removed in part: pooling it again would read the missing chunks as 0
            self.pooled = group.attrs.get("complete") is True
            self.pooled_bounds = group.attrs.get("bounds") if self.pooled else None
            group.attrs.update({RUN: self.run} if self.pooled else {"complete": False, "finished": None, RUN: self.run})  # the earlier run's workers no longer write here
            self._note_compute(group.attrs.get("compute"), attrs.get("compute"))
            _place(group, attrs, geometry)
            if not self.pooled:  # a pooled store's interval is the one it says
                _record_interval(group, attrs)
        else:
            group = _create_store(self.staged.path, shape, dtype, n_samples, {**attrs, RUN: self.run}, blocks, geometry, self.bounds)
        mean, spread, samples, self.done = open_block_arrays(self.staged.path)
        done = [bool(v) for v in self.done[:]]
        if self.pooled and not all(done):
            raise InputError(f"{self.resumable}: says it is complete but {len(done) - sum(done)} blocks are not marked done; use --overwrite instead of --resume to start again")
        self.held = any(done)
        return mean, spread, samples, done

    def _note_compute(self, before: dict[str, Any] | None, now: dict[str, Any] | None) -> None:
        """On a resumed store computed another way (bf16 and float32 differ in the last digits),
        the ways it was computed before (:attr:`computed_before`) and this run's, for
        :meth:`record_compute` to add."""
        if before is None or now is None:
            return
        runs = list(before["parts"]) if "parts" in before else [before]
        if now not in runs:
            self.computed_before, self._compute = runs, now

    def record_compute(self) -> None:
        """This run has finished a block: a resumed store computed partly one way and partly
        another says so in its provenance (``compute`` becomes ``{"parts": [...]}``). Only then,
        so that a run stopped before its first block claims no part it did not compute. A disk
        error here is the block's or the finish's to report: logged, not raised."""
        if self._compute is None or self.staged is None:
            return
        import zarr

        try:
            zarr.open_group(str(self.staged.path), mode="r+").attrs["compute"] = {"parts": [*self.computed_before, self._compute]}
            self._compute = None
        except OSError as err:
            log.info("%s: this run's way of computing is not recorded yet (%s)", self.staged.path, err)

    def passed_over_note(self) -> str | None:
        """What ``--resume`` says where several killed runs left their stores (None: one or none): it
        continues the newest (:attr:`resumable`), and the others, which no part of the run touches
        (it moves only its own store, to ``OUT.zarr`` or ``OUT.partial.zarr``), stay as they are;
        named, so that finished blocks are not left on disk unmentioned."""
        others = self.passed_over
        if not others or self.resumable is None:
            return None
        kept = "the other is kept as it is" if len(others) == 1 else f"the other {len(others)} are kept as they are"
        return (
            f"{self.resumable}: --resume continues this store, the newest of {1 + len(others)} that killed runs left beside {self.names.mean}; "
            f"{kept}, not continued: {', '.join(f'{p} ({_held(p)})' for p in others)}; "
            "to continue an older one instead, move the newer ones away first"
        )

    def _holds_blocks(self) -> bool:
        """Whether the store being written holds a finished block (this run's, an earlier run's, a
        cluster worker's); markers that cannot be read count as holding some."""
        return self.held or (self.staged is not None and blocks_done(self.staged.path) != 0)

    def mark_done(self, block: Block) -> None:
        """Record a finished block in the store (nothing to record in memory)."""
        if self.done is not None:
            self.done[block.index] = 1
            self.held = True

    @property
    def store_path(self) -> Path | None:
        """Where the store is being written (None for TIFFs): for workers writing blocks."""
        return self.staged.path if self.staged is not None else None

    def finish(
        self,
        mean: Any,
        spread: Any,
        samples: Any,
        complete: bool,
        region: tuple[slice, ...] | None,
        voxel: Sequence[float],
        provenance: dict[str, Any],
        q: float | None,
        origin: Sequence[float] | None = None,
        error: ErrorModel = ErrorModel(),
    ) -> tuple[list[Path], tuple[Any, Any, Any, Any, Any]]:
        """Pool the uncertainty and write what is complete: everything under the final names, or
        after a cancel the finished ``region`` (:func:`.blocks.finished_region`; None: nothing)
        as partial TIFFs, or the whole store, marked incomplete, under its partial name. Returns
        the paths written and the result arrays (mean, uncertainty, samples, lower, upper; a
        store's reopened where it now lies). A TIFF records where its first pixel lies (µm:
        ``origin``, the whole output's, moved to the region's start), as a store does, so
        that it reopens over the input."""
        shape = tuple(mean.shape)
        bounds = region_bounds(region, shape) if region is not None else None
        status = {"complete": complete, "finished": bounds, "shape": list(shape)}
        if self.names.store:
            if region is None and not self._holds_blocks():  # nothing finished: the store is removed by close(), as the run says
                return [], (None,) * 5
            # blocks finished out of order (a cluster's, or an earlier run's a resumed store holds)
            # are kept as any partial store's, though no part from the start is finished
            return self._finish_store(mean, spread, q, complete, status, error)
        arrays = finish_in_memory(mean, spread, samples, q, error)
        uncertainty, lower, upper = arrays[1], *arrays[3:]
        if region is None:
            return [], arrays
        where = (lambda p: p) if complete else OutputNames.partial  # noqa: E731
        from ..data.io import write_tiff

        first = [float(o) + a * float(v) for o, (a, _), v in zip(origin or (0.0,) * len(shape), bounds, voxel)]
        about = {**provenance, **status, "origin": first}
        parts: list[tuple[Path, Any, str | None]] = [(self.names.mean, mean, None), (self.names.std, uncertainty, "uncertainty")]
        if lower is not None and self.names.bounds:
            parts += [(p, a, f"{role} bound") for role, p, a in zip(("lower", "upper"), self.names.bounds, (lower, upper))]
        parts += [(p, samples[k], f"sample {k}") for k, p in enumerate(self.names.samples)]
        written = [where(p) for p, _, _ in parts]
        with replacing_set(written) as temps:  # all of the set or none of it under the final names
            for tmp, (_, data, role) in zip(temps, parts):
                write_tiff(tmp, data[region], voxel, self.inputs, origin=first, provenance={**about, "role": role} if role else about)
        if complete:
            for old in self.stale:  # an overwritten result's companions that this one does not have
                old.unlink(missing_ok=True)
            self._drop_superseded()
        return written, arrays

    def _drop_superseded(self) -> None:
        """After a finished run asked to ``overwrite``: remove the unfinished result a stopped run
        left under this output's partial names (ours only), which the finished one replaces (it
        was left beside it, taking room). Recorded in :attr:`superseded`, for the run to say."""
        if not self.overwrite:
            return
        if self.names.store:
            partial = OutputNames.partial(self.names.mean)
            if partial.is_dir() and (own_attrs(partial) or {}).get("complete") is False:
                _discard(partial)
                self.superseded = [partial]
            return
        for part in (OutputNames.partial(p) for p in self.names.finals()):
            if part.is_file() and _made_by_us(part):
                part.unlink()
                self.superseded.append(part)

    def _finish_store(
        self, mean: Any, spread: Any, q: float | None, complete: bool, status: dict[str, Any], error: ErrorModel
    ) -> tuple[list[Path], tuple[Any, Any, Any, Any, Any]]:
        import zarr

        assert self.staged is not None
        if not self.pooled:
            group = zarr.open_group(str(self.staged.path), mode="r+")
            bounds = (group["lower/0"], group["upper/0"]) if q is not None and "lower" in group else (None, None)
            pool_uncertainty(mean, spread, q if bounds[0] is not None else None, group["uncertainty/0"], *bounds, error)
            group.attrs.update(status)  # "complete": true now also says it is pooled (see allocate)
        path = self.staged.commit(None if complete else OutputNames.partial(self.names.mean))
        self.staged = None
        if complete:  # the raw spread is needed only to resume: removed once the result is in place, never before
            _drop_spread(path)
            self._drop_superseded()
        return [path], result_arrays(path)

    def close(self, quiet: bool = False) -> None:
        """Release the lock and, after an error, the temporary store: removed only where it is
        known to hold no finished block (none marked, none held in this run); else kept under its
        name (work a plain rerun refuses to discard, ``resume`` continues, as a killed run's) and,
        unless ``quiet`` (the caller's error says so), a warning says where."""
        if self.staged is not None:
            path, n = self.staged.path, blocks_done(self.staged.path)
            if n == 0 and not self.held:
                _discard(path)
            elif not quiet:
                what = "its finished blocks are" if n is None else f"{n} finished blocks are"
                log.warning("%s kept in %s; run the same command again with --resume to continue them", what, path)
            self.staged = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _held(store: Path) -> str:
    """What a store keeps, in words: ``3 finished blocks`` (``finished blocks`` where its markers cannot be read)."""
    n = blocks_done(store)
    return "finished blocks" if n is None else f"{n} finished block{'s' * (n != 1)}"


def _which_to_resume(partial: Path, killed: Sequence[Path]) -> str:
    """The refusal of ``--resume`` where both a stopped run's ``partial`` store and killed runs'
    stores (``killed``, newest first) hold finished blocks: whichever is resumed would be committed
    to ``partial`` if stopped again, replacing it, so the user chooses; every store is named, so
    that one step (moving or removing what it names) lets the next ``--resume`` go on."""
    newest = killed[0]
    if len(killed) == 1:
        here, theirs, named = f"two are here: this one ({_held(partial)}) and {newest} ({_held(newest)}, left by a killed run)", "the killed run's", "the killed run's store"
    else:
        listed = ", ".join(f"{p} ({_held(p)})" for p in killed)
        here = f"{1 + len(killed)} are here: this one ({_held(partial)}) and {len(killed)} that killed runs left, newest first: {listed}"
        theirs, named = f"the newest killed run's ({newest.name}; --resume then names the others and keeps them as they are)", f"{_every(len(killed))} killed runs' stores"
    names = [p.name for p in killed]
    remove = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return (
        f"{partial}: --resume continues one unfinished store, and {here}; to continue {theirs}, move {partial.name} away; "
        f"to continue {partial.name}, remove {remove}; or start again with --overwrite instead of --resume, which discards {named} "
        f"(and discards {partial.name} once it finishes, or replaces it if it is stopped too)"
    )


def _killed_stores(final: Path, dead: Sequence[Path] | None = None) -> list[Path]:
    """A killed run's work beside ``final``: its stores of ours (among ``dead``, by default
    :func:`_dead_temps`) whose markers say they finished blocks, or cannot be read (kept, not
    guessed empty); the newest first, the one ``--resume`` continues."""
    dead = _dead_temps(final) if dead is None else dead
    killed = [p for p in dead if not p.name.endswith(REMOVING) and own_attrs(p) is not None and blocks_done(p) != 0]
    return sorted(killed, key=lambda p: p.stat().st_mtime, reverse=True)


def stopped_run_refusal(final: Path) -> str | None:
    """The refusal of a plain rerun (neither ``--resume`` nor ``--overwrite``) writing store
    ``final`` where a stopped run left ``OUT.partial.zarr`` (:func:`_stopped_run_left`); None where
    it did not. Prediction's and the Enhance widget's check, before anything is computed."""
    partial = OutputNames.partial(final)
    if partial.is_dir() and (own_attrs(partial) or {}).get("complete") is False:
        return _stopped_run_left(partial, _killed_stores(final))
    return None


def complete_refusal(final: Path) -> str | None:
    """The refusal of ``--resume`` (without ``--overwrite``) where store ``final`` is a finished
    result of ours ('already exists; add --overwrite' advised a user who asked to continue to
    throw it away); None where it is not."""
    if (own_attrs(final) or {}).get("complete") is True:
        return f"{final}: this result is complete, nothing is left to resume (--overwrite instead of --resume computes it again)"
    return None


def check_new_output_beside(path: Path, final: Path, inputs: Sequence[Path | None], overwrite: bool) -> None:
    """:func:`..data.safe_output.check_new_output` for ``path``, a file of the result ``final``:
    where it refuses, and the way out it offers (``--overwrite``) would also discard the stores
    killed runs left beside ``final``, the refusal names them (:func:`_overwrite_discards`)."""
    try:
        check_new_output(path, list(inputs), overwrite)
    except InputError as err:
        left = [] if overwrite else _killed_stores(final)
        if not left:
            raise
        raise InputError(f"{err}; {_overwrite_discards(final, left)}") from None


def _stopped_run_left(partial: Path, killed: Sequence[Path]) -> str:
    """The refusal of a plain rerun (neither ``--resume`` nor ``--overwrite``) where a stopped
    run's ``partial`` store is here: what it holds, that ``--resume`` continues it, and what
    ``--overwrite`` would do: discard the stores killed runs left beside it (``killed``), and
    discard ``partial`` once that run finishes, or replace it if that run is stopped too."""
    text = f"{partial}: a stopped run's unfinished result is here ({_held(partial)})"
    keep = f"{partial.name} is discarded once that run finishes, or replaced if it is stopped too"
    if not killed:
        return text + f"; add --resume to continue it, or --overwrite to start again ({keep})"
    listed = ", ".join(f"{p.name} ({_held(p)})" for p in killed)
    beside, named = (
        (f"the store a killed run left beside it, {listed}", "it") if len(killed) == 1 else (f"the {len(killed)} stores killed runs left beside it, {listed}", _every(len(killed)))
    )
    return text + f", and {beside}; add --resume (it says how to choose which to continue), or --overwrite to start again, which discards {named} ({keep})"


def _overwrite_discards(final: Path, killed: Sequence[Path]) -> str:
    """What a refusal that offers ``--overwrite`` adds where killed runs left stores beside
    ``final`` (``killed``, newest first): that it discards them, each named, and how to continue
    the newest instead."""
    listed = ", ".join(f"{p.name} ({_held(p)})" for p in killed)
    them = f"the store a killed run left beside {final.name}: {listed}" if len(killed) == 1 else f"the {len(killed)} stores killed runs left beside {final.name}, newest first: {listed}"
    return f"--overwrite also discards {them} (--resume --overwrite continues {'it' if len(killed) == 1 else 'the newest'} instead)"


def _killed_runs_left(final: Path, killed: Sequence[Path]) -> str:
    """The refusal of a plain rerun (neither ``--resume`` nor ``--overwrite``) where killed runs
    left stores beside ``final`` (``killed``, newest first): each named with its finished blocks,
    which one ``--resume`` continues, and that ``--overwrite`` discards them all."""
    newest = killed[0]
    if len(killed) == 1:
        return (
            f"{final}: a run that was killed left its store beside it: {newest.name} ({_held(newest)}); "
            "add --resume to continue it, or --overwrite to start again, which discards it"
        )
    listed = ", ".join(f"{p.name} ({_held(p)})" for p in killed)
    return (
        f"{final}: {len(killed)} runs that were killed left their stores beside it, newest first: {listed}; "
        f"add --resume to continue the newest, {newest.name} (it names the others and keeps them as they are), "
        f"or --overwrite to start again, which discards {_every(len(killed))}"
    )


def _every(n: int) -> str:
    """``both`` or ``all 3``: every one of ``n`` (two or more) stores."""
    return "both" if n == 2 else f"all {n}"


def block_failure(err: BaseException, what: str, store: Path, blocks: int) -> BlockError:
    """The error a run of ``blocks`` blocks stopped by a failed one (``what``: which, in words)
    ends with: first how many ``store`` keeps (its done-markers: on a cluster others may have
    finished meanwhile) and how to continue them, as a long cause (a CUDA out-of-memory report)
    must not hide that, then the cause. A block cancelled on the cluster is said in one sentence
    that names it once (:meth:`.BlockCancelledOnCluster.said`), what is kept after it."""
    cause = " ".join(str(err).split())
    n = blocks_done(store)
    held = "its finished blocks are" if n is None else f"{n} of {blocks} blocks are"
    kept = f"{held} kept in {store}; run it again and add --resume to continue"
    if isinstance(err, BlockCancelledOnCluster):
        return BlockError(f"{err.said(what)}: {kept}", store)
    return BlockError(f"{what} failed: {kept}. The error: {type(err).__name__}{': ' + cause if cause else ''}", store)


def _drop_spread(store: Path) -> None:
    """Remove the raw spread from a store in place, complete and pooled: what is left of it, if
    the removal stops, is a hidden array that nothing reads (a complete store is never resumed)."""
    try:
        shutil.rmtree(store / SPREAD)
    except OSError as err:
        log.warning("%s: the samples' raw spread, needed only to resume, could not be removed (%s); the result is complete, and it can be deleted", store / SPREAD, err)


def _create_store(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, n_samples: int, attrs: dict[str, Any], blocks: Sequence[Block], geometry: Geometry, bounds: bool
) -> Any:
    import zarr

    chunks = block_chunks(shape, blocks)
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.attrs.update({CREATED_BY: SOFTWARE, **attrs, "complete": False, "finished": None, "shape": list(shape), "blocks": len(blocks)})
    images = [("mean", dtype), ("uncertainty", np.float32)] + ([("lower", np.float32), ("upper", np.float32)] if bounds else [])
    axes = tuple("zyx"[-len(shape) :])  # OME-Zarr 0.5: the arrays name their axes as the metadata does
    for name, dt in images:
        image = group.create_group(name, attributes=ome_image_attrs(name, geometry.voxel, geometry.origin))
        image.create_array("0", shape=shape, dtype=dt, chunks=chunks, fill_value=0, dimension_names=axes)
    if n_samples:
        image = group.create_group("samples", attributes=ome_image_attrs("samples", geometry.voxel, geometry.origin, lead="sample"))
        image.create_array("0", shape=(n_samples, *shape), dtype=dtype, chunks=(1, *chunks), fill_value=0, dimension_names=("sample", *axes))
    group.create_array(SPREAD, shape=shape, dtype=np.float32, chunks=chunks, fill_value=0)
    group.create_array(DONE, shape=(len(blocks),), dtype=np.uint8, chunks=(1,), fill_value=0)
    return group


def _place(group: Any, attrs: dict[str, Any], geometry: Geometry) -> None:
    """Where a resumed store's images lie, as this run says: the pixels do not depend on the
    voxel size or the origin, but a run may know them better than the one it continues (the input's
    metadata mended, or a layer's units read since), and a store must not keep a stale place (nor
    a ``sampling`` once a pixel size is known)."""
    for name in ("mean", "uncertainty", "lower", "upper", "samples"):
        if name in group:
            group[name].attrs.update(ome_image_attrs(name, geometry.voxel, geometry.origin, lead="sample" if name == "samples" else None))
    group.attrs.update({"voxel_size": attrs["voxel_size"]})
    for key in ("origin", "sampling"):
        if key in attrs:
            group.attrs[key] = attrs[key]
        elif key in group.attrs:
            del group.attrs[key]


#: what a store says of its interval (``lower``/``upper``): its coverage and scale, and the planes
#: whose bounds were widened, or widened past calibration; the run that finishes it computes them
INTERVAL_ATTRS = ("bounds", "bounds_widened", "bounds_rough")


def _record_interval(group: Any, attrs: dict[str, Any]) -> None:
    """A resumed store's interval as this run will compute it: the interval is pooled when the
    run finishes, at this run's ``--alpha`` (not in the resume key: it changes no block), so the
    store must not keep the coverage the run it continues said."""
    for key in INTERVAL_ATTRS:
        if key in attrs:
            group.attrs[key] = attrs[key]
        elif key in group.attrs:
            del group.attrs[key]


def check_run(path: Path, run: str) -> None:
    """Refuse (:class:`StaleRunError`) unless the store at ``path`` is the one run ``run`` writes:
    a cluster worker looks before computing a block, before writing it and before marking it done,
    so a block of a run that has ended is written into no other run's store. What this leaves is a
    worker that passed its look just before its store was moved or removed: its writes recreate
    folders at the old path that are no store (chunk files only) and its block is not marked done
    anywhere; the worker removes them after the block (:func:`clear_stale_writes`), and one killed
    before it could leaves them to the next run of the output (:meth:`PredictionOutput.claim`)."""
    attrs = own_attrs(path)
    if attrs is None or attrs.get(RUN) != run:
        there = "no store of ours is there now" if attrs is None else f"the store there is now run {attrs.get(RUN)}'s"
        raise StaleRunError(f"{path}: a block of run {run}, but {there} (the run ended, was resumed or started again): the block is not written")


def open_block_arrays(path: Path) -> tuple[Any, Any, Any, Any]:
    """The arrays blocks are written into (mean, raw spread, samples or None, done-markers) of
    the store being written at ``path`` (in this process or on a worker)."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    samples = group["samples/0"] if "samples" in group else None
    spread = group[SPREAD] if SPREAD in group else None  # a pooled store's may be gone (PredictionOutput.pooled)
    return group["mean/0"], spread, samples, group[DONE]


def result_arrays(path: Path) -> tuple[Any, Any, Any, Any, Any]:
    """Mean, uncertainty, samples, lower and upper (None where absent) of a finished store."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    get = lambda name: group[f"{name}/0"] if name in group else None  # noqa: E731
    return get("mean"), get("uncertainty"), get("samples"), get("lower"), get("upper")


#: the resume key's entries as a user knows them (the command line's option and the Enhance widget's control)
RESUME_KEY_WORDS = {
    "model": "another model",
    "input_shape": "an input of another shape",
    "input_content": "another input (its content differs)",
    "normaliser": "another input (its intensity range differs)",
    "variant_options": "other variant options",
    "settings": "other sampling settings (steps, samples, sampler, tiles or seed)",
    "estimate": "another output (--estimate)",
    "dtype": "another output type (--keep-dtype)",
    "samples_kept": "samples kept or not (--save-samples; 'Add the samples as a layer' in Enhance)",
}


def _difference(name: str, then: Any, now: Any) -> str:
    """What differs between two values of a resume-key entry: for settings, only the settings
    that changed ("steps 2 then, 3 now"), not the two whole dictionaries."""
    if isinstance(then, dict) and isinstance(now, dict):
        changed = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
        return ", ".join(f"{k} {then.get(k)!r} then, {now.get(k)!r} now" for k in changed)
    return f"{name} {then!r} then, {now!r} now"


def _scheme(digest: Any) -> str | None:
    """How an input's content was hashed (``SCHEME:HEX``; a bare hash: the central squares of a
    few planes, before the whole input was hashed; None: not recorded)."""
    if digest is None:
        return None
    return digest.partition(":")[0] if isinstance(digest, str) and ":" in digest else "samples"


def _check_resumable(path: Path, key: dict[str, Any], n_blocks: int) -> None:
    """Refuse to continue a store that is not ours, or was made with another model, input or
    settings, or cut into other blocks (a version that cut large planes otherwise)."""
    attrs = own_attrs(path)
    if attrs is None:
        raise InputError(f"{path}: not an output of {SOFTWARE}; refusing to resume into it")
    old = attrs.get("resume_key")
    if not isinstance(old, dict) or not (path / DONE).is_dir():
        raise InputError(f"{path}: made by an older version of {SOFTWARE} without block markers; it cannot be resumed (start again with --overwrite instead of --resume)")
    if "input_content" in key and _scheme(old.get("input_content")) != _scheme(key["input_content"]):
        what = "did not record its input's content" if "input_content" not in old else "hashed only samples of its input's content"
        raise InputError(f"{path}: made by a version of {SOFTWARE} that {what}, so it cannot be resumed safely; use --overwrite instead of --resume to start again")
    for name in sorted(set(old) | set(key)):
        if old.get(name) != key.get(name):
            raise InputError(
                f"{path}: cannot resume: this run has {RESUME_KEY_WORDS.get(name, name)} ({_difference(name, old.get(name), key.get(name))}); "
                "use the same model, input and settings, or --overwrite instead of --resume to start again"
            )
    if attrs.get("blocks") != n_blocks:
        raise InputError(
            f"{path}: cannot resume: it was cut into {attrs.get('blocks')} blocks, this version cuts the input into "
            f"{n_blocks}; use --overwrite instead of --resume to start again"
        )
