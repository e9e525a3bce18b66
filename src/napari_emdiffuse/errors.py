"""Every exception type of the package (a user can cause them all); the CLI prints their message on
one line, the widgets notify it. Kept at the ground floor, so that any module may raise any of them."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


class EMDiffuseError(Exception):
    """Base class: something the user can fix, with a message that says how."""


class InputError(EMDiffuseError, ValueError):
    """Input data that cannot be used (shape, dtype, NaN, empty, mismatched pair, unreadable file)."""


class RegistrationError(InputError):
    """An input/target pair that could not be aligned (unrelated content, too little overlap, flat images).

    ``no_signal``: refused because the pair holds too little signal to align by (flat, or too
    few counts), not because it looks unrelated: prepare counts its patches as "no signal"."""

    def __init__(self, message: str, *, no_signal: bool = False) -> None:
        super().__init__(message)
        self.no_signal = no_signal


class ConfigError(EMDiffuseError, ValueError):
    """A preset or configuration value that cannot be used; the message says which and why."""


class ModelFileError(EMDiffuseError):
    """A model or checkpoint folder that is missing, incomplete or from an unknown format."""


class DeviceError(EMDiffuseError):
    """A requested device that is not available."""


class StaleRunError(EMDiffuseError):
    """A cluster worker's block of a prediction whose store is no longer its run's (the run ended,
    was resumed or started again): the block is not written."""


class BlockError(EMDiffuseError):
    """A prediction stopped by a block that failed for good (out of memory, a disk error, a lost
    worker): its finished blocks are kept, and the message says where and how to continue.
    ``store`` is where they are, for a caller that shows them (the Enhance widget)."""

    def __init__(self, message: str, store: Path | None = None) -> None:
        super().__init__(message)
        self.store = store


class BlockCancelledOnCluster(EMDiffuseError):
    """A prediction's block whose task someone else cancelled on its dask cluster (another client,
    the scheduler), with dask's ``reason``: raised by the cluster's loop, which knows the block
    only by its index; the job names it as it names any failed block (:meth:`said`)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(self.said("a block"))

    def said(self, what: str) -> str:
        """The cancel in words, for the block ``what`` (``block 3 of 8 (z 2:3 of 8)``)."""
        return f"{what} was cancelled on the dask cluster, not by this run (dask's reason: {self.reason})"


class LaunchError(EMDiffuseError):
    """A distributed launch (torchrun, srun) that cannot run: bad launcher variables, a peer
    process that failed, a process group that cannot form."""


class Cancelled(EMDiffuseError):
    """Raised inside a job when the user cancelled it; partial results are kept."""


@contextlib.contextmanager
def naming(files: dict[str, object]) -> Iterator[None]:
    """Data errors say which file they are about: the jobs call their arrays by role ("input
    contains NaN ..."); inside this block the role becomes ``input FILE``."""
    try:
        yield
    except InputError as err:
        text = str(err)
        for role, path in files.items():
            if path and text.startswith(f"{role} ") and not text.startswith(f"{role} {path}"):  # named once
                raise InputError(f"{role} {path}{text[len(role):]}") from None
        raise
