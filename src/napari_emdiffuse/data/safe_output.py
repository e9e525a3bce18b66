"""Outputs that never destroy what is already there.

Every file and folder store is written beside its final name (a hidden temporary in the same
folder, named ``.NAME.tmp-PID-...``) and renamed into place only when it is complete, so a kill,
a full disk or an error leaves the old file or nothing under the final name, never a truncated
one. An existing output is replaced only when the user asks (``overwrite``), a non-empty folder
only when it is one of our own outputs, and a lock file beside each output (or inside a run
folder) stops a second process from writing the same one. Free space and writability of the
destination are checked before the computation, not after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import ctypes.util
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import InputError
from .formats import store_root

log = logging.getLogger(__name__)

#: the attribute (zarr) or provenance key that marks a store or file as our own output
CREATED_BY = "created_by"
SOFTWARE = "napari-emdiffuse"
#: free space kept beyond the estimated size of an output
SPACE_MARGIN = 16 * 2**20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode() -> int:
    """The mode a plain new file gets here (mkstemp's files are owner-only; outputs are shared)."""
    return 0o666 & ~_umask()


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.tmp-{os.getpid()}-"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _cannot_write(folder: Path, err: OSError) -> InputError:
    return InputError(f"{folder}: cannot write there ({err.strerror or err})")


@contextlib.contextmanager
def replacing_file(final: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` to write; on success it is flushed to disk and
    renamed to ``final`` in one step, on any failure (or Ctrl-C) removed.

    ``keep_existing`` starts the temporary as a copy of ``final`` (for formats written by
    appending, e.g. a new dataset in an existing HDF5 file).
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(final), dir=final.parent)
    except OSError as err:
        raise _cannot_write(final.parent, err) from None
    os.close(fd)
    tmp = Path(name)
    try:
        if keep_existing and final.is_file():
            shutil.copyfile(final, tmp)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def replacing_set(finals: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside each of ``finals`` to write (each atomically, e.g. with
    :func:`replacing_file`); when all are written they are renamed into place together, and a
    failure on any of them (a full disk at the last file, Ctrl-C) removes them all. So a set of
    results (the result, its uncertainty, its bounds) is never left short under its final names:
    renaming needs no space. The files a set replaces are first moved aside and put back if a
    rename fails (a file open in another program on Windows, one a colleague owns in a shared
    folder), so the set under the final names is the whole old one or the whole new one. A
    failed write is reported in one line naming the set's first file."""
    finals = [Path(f) for f in finals]
    temps = [f.parent / f"{_temp_prefix(f)}set{''.join(f.suffixes[-2:])}" for f in finals]
    try:
        for f in finals:
            f.parent.mkdir(parents=True, exist_ok=True)
        yield temps
        _rename_all(temps, finals)
        for folder in {f.parent for f in finals}:
            _fsync_dir(folder)
    except OSError as err:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise InputError(
            f"{finals[0]}: the result could not be written ({err.strerror or err}); none of its {len(finals)} files was put under its final name"
        ) from None
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


def _rename_all(temps: Sequence[Path], finals: Sequence[Path]) -> None:
    """Rename each of ``temps`` to its final name, the old files moved aside first; if any step
    fails, every final name gets its old file back (or none, where there was none)."""
    moved: list[tuple[Path, Path | None]] = []
    try:
        for tmp, final in zip(temps, finals):
            aside = None
            if final.exists() or final.is_symlink():
                aside = final.parent / f"{_temp_prefix(final)}old"
                os.replace(final, aside)
            moved.append((final, aside))
            os.replace(tmp, final)
    except BaseException:
        for final, aside in reversed(moved):
            with contextlib.suppress(OSError):
                if aside is not None:
                    os.replace(aside, final)
                else:
                    final.unlink(missing_ok=True)
        raise
    for _, aside in moved:
        if aside is not None:
            aside.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that a kill at any moment leaves the old file or the new one."""
    with replacing_file(path) as tmp:
        tmp.write_bytes(data)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class StagedStore:
    """A folder store (zarr) built beside ``final`` and swapped in once complete.

    ``path`` is where to write. :meth:`commit` renames it to ``final`` (or to another name, e.g.
    a partial result), removing what was there only after the new store is in place;
    :meth:`discard` removes it. A store left by a killed process keeps its temporary name.
    """

    def __init__(self, final: str | Path) -> None:
        self.final = Path(final)
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=_temp_prefix(self.final), dir=self.final.parent))
        except OSError as err:
            raise _cannot_write(self.final.parent, err) from None
        os.chmod(self.path, 0o777 & ~_umask())  # mkdtemp's folders are owner-only

    def commit(self, to: str | Path | None = None) -> Path:
        self.path = swap_in(self.path, Path(to) if to is not None else self.final)
        return self.path

    def discard(self) -> None:
        _remove(self.path)


def swap_in(new: Path, dest: Path) -> Path:
    """Put the finished folder ``new`` at ``dest``; what was there is removed only once the new
    one is in place (swapped in one step where the system can, else by two renames)."""
    if dest.exists() or dest.is_symlink():
        if not (dest.is_dir() and not dest.is_symlink() and _exchange(new, dest)):
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), dir=dest.parent))
            os.rmdir(old)
            os.rename(dest, old)
            os.rename(new, dest)
            new = old
        _remove(new)  # the old store, now under the temporary name
    else:
        os.rename(new, dest)
    _fsync_dir(dest.parent)
    return dest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


#: the root attributes of a prediction store from before stores carried ``created_by``
OLD_PREDICTION_KEYS = {"voxel_size", "variant", "complete"}


def own_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of a zarr store we wrote (v2 ``.zattrs`` or v3 ``zarr.json``), else None.
    A prediction store of the old layout (those root attributes, a ``mean`` array, zarr v2)
    is recognised as ours too, so that ``--overwrite`` can replace it."""
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        try:
            attrs = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        attrs = attrs.get(key, {}) if key else attrs
        if isinstance(attrs, dict) and attrs.get(CREATED_BY) == SOFTWARE:
            return attrs
        if name == ".zattrs" and isinstance(attrs, dict) and set(attrs) == OLD_PREDICTION_KEYS and (path / "mean" / ".zarray").is_file():
            return attrs
    return None


def _file_ids(path: Path) -> set[tuple[int, int]]:
    """(device, inode) of ``path`` and of each of its folders that exist."""
    ids = set()
    for p in (path, *path.parents):
        try:
            st = os.stat(p)
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_overwrite(path: Path, protect: Sequence[Path | None]) -> None:
    """Raise when ``path`` is (or lies inside, or holds) one of the input paths; compared by
    resolved path and by device and inode, so a hard link to an input (or a second mount of
    its folder) is caught too."""
    target = Path(path).resolve()
    target_id, target_chain = _file_id(target), _file_ids(target)
    for p in protect:
        if p is None:
            continue
        src = Path(p).resolve()
        src_id = _file_id(src)
        same = src_id is not None and (src_id in target_chain or (target_id is not None and target_id in _file_ids(src)))
        if same or target == src or src in target.parents or target in src.parents:
            raise InputError(f"{path}: refusing to overwrite the input {p}; choose another output name")
        store = store_root(src)  # an input array of a store: the whole store is the input's
        if store != src and (store in target.parents or target == store):
            raise InputError(f"{path}: lies inside {store}, the store the input {p} belongs to; write the result beside it instead")


def check_new_output(path: str | Path, protect: Sequence[Path | None] = (), overwrite: bool = False) -> None:
    """Refuse ``path`` before anything is computed: when it is (or holds) an input, when it
    exists and ``overwrite`` is not given, or when it is a non-empty folder that is not one of
    our own outputs (never replaced, whatever the flags say)."""
    path = Path(path)
    refuse_overwrite(path, protect)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()):
            return  # an empty folder holds nothing to lose
        if own_attrs(path) is None:
            raise InputError(f"{path}: an existing folder that is not an output of {SOFTWARE}; refusing to write into it, choose a new name")
    if not overwrite:
        raise InputError(f"{path} already exists; add --overwrite to replace it (or choose another name)")


def check_space(folder: str | Path, nbytes: int) -> None:
    """Refuse to start when ``folder`` has less free space than an output of ``nbytes`` needs."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < nbytes + SPACE_MARGIN:
        raise InputError(
            f"{folder}: not enough free space (the output needs about {_size(nbytes)}, and {_size(SPACE_MARGIN)} are kept free; {_size(free)} free)"
        )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: how long a contender waits for another process's takeover of a stale lock, and when a
#: takeover guard is so old that its process must have died during the takeover
TAKEOVER_WAIT_S, TAKEOVER_STALE_S = 5.0, 30.0


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents, one level at a time; the ones this call made,
    deepest first (only those: a path through ``..`` or another process's folder made meanwhile
    is never counted as ours)."""
    made = []
    for f in reversed((folder, *folder.parents)):
        try:
            os.mkdir(f)
        except FileExistsError:
            continue
        except OSError:
            for g in reversed(made):
                with contextlib.suppress(OSError):
                    g.rmdir()
            raise
        made.append(f)
    return made[::-1]


class Lock:
    """An exclusive lock file (created with ``O_EXCL``) holding pid, host and start time.

    A second process refuses with a message naming the first. A lock left by a process that
    is gone (same host, pid not running) is taken over with a warning, and the temporaries
    that process left beside ``outputs`` are removed. The takeover itself is guarded by a
    second ``O_EXCL`` file (``NAME.takeover``): of several processes finding one stale lock at
    once, only the guard's holder removes it, and only while it is still that stale lock, so
    exactly one of them ends up holding the lock.

    The lock's folder is created if it is missing (with its missing parents); on release, those
    the lock created and the job left empty (a cancel or an error before anything was written)
    are removed again, so a run that wrote nothing leaves nothing.
    """

    def __init__(self, lock_path: str | Path, what: str, outputs: Sequence[Path] = ()) -> None:
        self.path, self.what, self.outputs = Path(lock_path), what, list(outputs)
        self.guard = self.path.with_name(self.path.name + ".takeover")
        self.held = False
        self.made: list[Path] = []  # the folders acquire created, deepest first
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self) -> "Lock":
        try:
            self.made = _make_folders(self.path.parent.absolute())
        except OSError as err:
            raise _cannot_write(self.path.parent, err) from None
        try:
            return self._take()
        except BaseException:
            self.release()  # the folders it made, left empty
            raise

    def _take(self) -> "Lock":
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        while time.monotonic() < deadline:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as err:
                raise _cannot_write(self.path.parent, err) from None
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self.held = True
            return self
        raise InputError(f"{self.what}: cannot take the lock {self.path} (other processes keep taking it); try again")

    def _holder(self) -> dict[str, Any] | None:
        """What the lock file says (None when it is gone); refuse a file that is not our lock."""
        try:
            other = json.loads(self.path.read_text())
            int(other["pid"]), str(other["host"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"{self.what} is locked by {self.path}, which is not a lock file of ours; delete it if no other emdiffuse is running") from None
        return other

    def _take_over_if_stale(self) -> None:
        other = self._holder()
        if other is None:
            return  # released meanwhile: try again
        pid, host = int(other["pid"]), str(other["host"])
        if host != self.info["host"] or pid_alive(pid):
            raise InputError(
                f"{self.what} is in use by process {pid} on {host} (started {other.get('started', '?')}); "
                f"wait for it to finish, or delete {self.path} if that process is gone"
            )
        try:
            fd = os.open(self.guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._wait_for_takeover()
            return
        except OSError as err:
            raise _cannot_write(self.path.parent, err) from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            if self._holder() != other:
                return  # someone else took it over before we held the guard: try again
            log.warning("%s: taking over the lock of process %d, which is no longer running", self.what, pid)
            for out in self.outputs:
                for left in out.parent.glob(f"{glob.escape(f'.{out.name}.tmp-{pid}-')}*"):
                    _remove(left)
            self.path.unlink(missing_ok=True)
        finally:
            self.guard.unlink(missing_ok=True)

    def _wait_for_takeover(self) -> None:
        """Another process holds the takeover guard: give it a moment, unless it died holding it."""
        try:
            age = time.time() - self.guard.stat().st_mtime
        except FileNotFoundError:
            return
        if age > TAKEOVER_STALE_S:
            raise InputError(f"{self.what}: a process died while taking over the stale lock {self.path}; delete {self.guard} and {self.path} if no other emdiffuse is running")
        time.sleep(0.02)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        for folder in self.made:  # rmdir removes only an empty folder: anything written stays
            try:
                folder.rmdir()
            except OSError:
                break
        self.made = []

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_beside(path: str | Path, outputs: Sequence[Path] = ()) -> Lock:
    """The lock of one output: ``NAME.lock`` beside it."""
    path = Path(path)
    return Lock(path.with_name(path.name + ".lock"), str(path), outputs or [path])
