"""Trust check before Ray Tune restores a study: its state is pickles, and a pickle runs code.

``Tuner.restore`` unpickles ``tuner.pkl``, the searcher's state and the trials in the
experiment state (and ``ExperimentAnalysis`` does so too). Whoever can write those files
can run code as the user who resumes the study. llray therefore restores a Tune study only
when every file and directory of its state (``OUTPUT/tune`` itself, everything under
``OUTPUT/tune/STUDY``, and the saved spec) belongs to the current user, is not writable by
group or others, and is not a symbolic link. State on an object store (``s3://...``),
whose owner llray cannot see, is never restored: use ``--backend optuna`` with a journal
file or an RDB URL there (Optuna's storages hold no pickles).

The check cannot stop a user who already runs code as you, nor a swap between the check
and the load in a directory others can write (keep ``--output`` in a directory only you
can write).

Example:
    >>> import tempfile
    >>> problems(tempfile.mkdtemp())
    []
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from llray.errors import ConfigError

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def problems(path: str | os.PathLike[str], uid: int | None = None,
             recursive: bool = True) -> list[str]:
    """Why the state under ``path`` may not be unpickled by user ``uid`` (default: the
    current user); empty when it may. ``path`` itself and (``recursive``) everything
    below it count; a path that does not exist has no problems."""
    uid = os.getuid() if uid is None else uid
    found: list[str] = []
    top = Path(path)
    if not top.exists() and not top.is_symlink():
        return found
    for entry in [top, *(sorted(_below(top)) if recursive else [])]:
        found += _entry_problems(entry, uid)
    return found


def _below(top: Path) -> list[Path]:
    if top.is_symlink() or not top.is_dir():
        return []
    out = []
    for folder, dirs, files in os.walk(top):  # os.walk does not follow symbolic links
        out += [Path(folder, n) for n in dirs + files]
    return out


def _entry_problems(entry: Path, uid: int) -> list[str]:
    st = entry.lstat()
    if stat.S_ISLNK(st.st_mode):
        return [f"{entry} is a symbolic link"]
    found = []
    if st.st_uid != uid:
        found.append(f"{entry} belongs to user {st.st_uid}, not to you ({uid})")
    if st.st_mode & _OTHERS_WRITE:
        found.append(f"{entry} is writable by group or others "
                     f"(mode {stat.S_IMODE(st.st_mode):o})")
    return found


def check_restorable(state_dirs: list[str], uid: int | None = None,
                     parents: tuple[str, ...] = ()) -> None:
    """Refuse to restore pickled Tune state that anyone but the current user could write.

    Args:
        state_dirs: the files and directories (with all below them) a restore reads.
        uid: the user the files must belong to (default: the current user).
        parents: directories checked themselves only (whoever writes them can replace
            the state in them).

    Raises:
        ConfigError: ``output``, naming the first file that fails and what to do.
    """
    for path in [*parents, *state_dirs]:
        if "://" in str(path):
            raise ConfigError("output", f"Ray Tune state at {path} is pickled and its owner "
                                        "cannot be checked on an object store, so llray does "
                                        "not restore it; for studies on shared storage use "
                                        "--backend optuna with a journal file or RDB --storage")
        found = problems(path, uid, recursive=path not in parents)
        if found:
            raise ConfigError("output", f"refusing to restore Ray Tune state (pickles run "
                                        f"code when loaded): {found[0]}"
                                        f"{f' (and {len(found) - 1} more)' if len(found) > 1 else ''};"
                                        " resume only state that you alone can write, or use "
                                        "--backend optuna with a journal file or RDB --storage "
                                        "for shared storage")
