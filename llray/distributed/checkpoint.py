"""Per-task checkpoints of a lifelong run, on a local path or any ``pyarrow.fs`` URI.

One file per run, ``ROOT/<run_id>.pt``, replaced after every task. A checkpoint is
written to a temporary name next to it and then moved over the old one, so a reader (a
restarted actor) sees the previous checkpoint or the new one, never half a file. Files
are read with ``torch.load(..., weights_only=True)``: a checkpoint holds tensors, numbers,
strings, lists and dicts only, and loading one never runs code from the file.

On a multi-node cluster ``ROOT`` must be storage that every node sees (an NFS mount
present on every node, or ``s3://``/``gs://``/``abfs://``): an actor restarted on another
node reads the checkpoint its predecessor wrote.

Example:
    >>> import tempfile, torch
    >>> store = CheckpointStore(tempfile.mkdtemp())
    >>> store.save("run1", {"step": 2, "w": torch.ones(2)})
    >>> store.load("run1")["step"]
    2
    >>> store.load("other") is None
    True
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch
from pyarrow import fs as pafs

from llray.errors import ConfigError

FORMAT = 1  # bumped when the layout of the saved dict changes


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the message says where and why)."""


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` (``s3://``, ``gs://``, ``file://``); False for plain paths."""
    return len(urlparse(path).scheme) > 1 and "://" in path


def is_node_local(path: str) -> bool:
    """True when ``path`` names a directory on one machine's disk (plain path or file://).

    An NFS mount is also a plain path; llray cannot tell it from a local disk, so callers
    warn and let the user decide.
    """
    return not is_uri(path) or urlparse(path).scheme == "file"


def resolve(path: str) -> str:
    """``path`` made absolute when it is a plain path (actors do not share the driver's cwd)."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def check_writable(root: str) -> None:
    """Check, before any work, that checkpoints can be written under a plain path ``root``.

    Nothing is created: the directory, or its nearest existing parent, must be a
    writable directory. URIs (``s3://``...) are not checked here; a failed write there
    fails the run with the storage's own reason.

    Raises:
        ConfigError: ``checkpoint.path``, naming the directory and why.

    Example:
        >>> import tempfile
        >>> check_writable(tempfile.mkdtemp() + "/not/yet/there")
    """
    if is_uri(root) and urlparse(root).scheme != "file":
        return
    path = os.path.abspath(urlparse(root).path if is_uri(root) else os.path.expanduser(root))
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        problem = f"{probe!r} is not a directory"
    elif not os.access(probe, os.W_OK | os.X_OK):
        problem = f"{probe!r} is not writable"
    else:
        return
    raise ConfigError("checkpoint.path", f"cannot write checkpoints to {root!r}: {problem}")


@dataclass(frozen=True)
class CheckpointStore:
    """Saves and loads one checkpoint per run under ``root`` (plain path or URI)."""

    root: str

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        if is_uri(self.root):
            return pafs.FileSystem.from_uri(self.root)
        return pafs.LocalFileSystem(), resolve(self.root)

    def path(self, run_id: str) -> str:
        """Where ``run_id``'s checkpoint lives, as the filesystem sees it."""
        return f"{self._fs()[1].rstrip('/')}/{run_id}.pt"

    def save(self, run_id: str, state: dict[str, Any]) -> None:
        """Write ``state`` atomically: to a temporary name, then moved over the old file."""
        fs, base = self._fs()
        base = base.rstrip("/")
        buf = io.BytesIO()
        torch.save(state, buf)
        fs.create_dir(base, recursive=True)
        tmp = f"{base}/.{run_id}.{uuid.uuid4().hex}.tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(buf.getbuffer())
        fs.move(tmp, f"{base}/{run_id}.pt")

    def load(self, run_id: str) -> dict[str, Any] | None:
        """The last checkpoint of ``run_id`` on the CPU, or None if there is none."""
        fs, _ = self._fs()
        path = self.path(run_id)
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            data = f.read()
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def save_run(self, run_id: str, run_state: dict[str, Any], started_at: str,
                 wall_s: float) -> None:
        """Checkpoint one lifelong run (:meth:`LifelongRun.state_dict`) with its start time
        and wall seconds so far, in this module's :data:`FORMAT`.

        Raises:
            CheckpointError: the file could not be written (says where and why).
        """
        state = {"format": FORMAT, "run_id": run_id, "run": run_state,
                 "started_at": started_at, "wall_s": wall_s}
        try:
            self.save(run_id, state)
        except Exception as e:  # noqa: BLE001 - OSError, pyarrow's errors: say where and why
            raise CheckpointError(f"cannot write the checkpoint to {self.root}: "
                                  f"{type(e).__name__}: {e}") from None

    def load_run(self, run_id: str) -> dict[str, Any] | None:
        """What :meth:`save_run` wrote for ``run_id`` (None if there is none).

        Raises:
            ValueError: the file has another format or belongs to another run (any error
                of reading it propagates too: the caller moves it aside).
        """
        state = self.load(run_id)
        if state is None:
            return None
        if state.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r}, expected {FORMAT}")
        if state.get("run_id") != run_id:
            raise ValueError(f"the checkpoint belongs to run {state.get('run_id')!r}")
        return state

    def quarantine(self, run_id: str) -> str:
        """Move ``run_id``'s checkpoint aside to ``<run_id>.pt.bad``; returns that path.

        A file that cannot be read is kept for inspection but no longer found by
        :meth:`load` or :meth:`run_ids`, so the next attempt starts the run over.
        """
        fs, _ = self._fs()
        path = self.path(run_id)
        bad = f"{path}.bad"
        if fs.get_file_info(bad).type == pafs.FileType.File:
            fs.delete_file(bad)
        fs.move(path, bad)
        return bad

    def delete(self, run_id: str) -> None:
        """Remove ``run_id``'s checkpoint (no error if there is none)."""
        fs, _ = self._fs()
        path = self.path(run_id)
        if fs.get_file_info(path).type == pafs.FileType.File:
            fs.delete_file(path)

    def run_ids(self) -> set[str]:
        """The runs that have a checkpoint under ``root``."""
        fs, base = self._fs()
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            return set()
        infos = fs.get_file_info(pafs.FileSelector(base))
        return {i.base_name[:-3] for i in infos if i.base_name.endswith(".pt")
                and not i.base_name.startswith(".")}
