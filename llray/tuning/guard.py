"""One study, one name: refuse a second study or backend under a study name in use.

A study's name is its ``experiment`` in the results store, its Ray Tune folder
``OUTPUT/tune/STUDY`` and its Optuna study name. Starting a study whose name already
has runs in the store, or state of either backend, would merge two studies (or two
backends' trials) under one name without a word. So before any work:

- state of the *other* backend under the name is always an error (a study cannot be
  continued by another backend);
- runs in the store, or state of the same backend, are an error unless ``--resume``
  (or, for ``--backend optuna``, ``--worker K``: a process joining a shared study).

Example:
    >>> import tempfile
    >>> from llray.tuning.spec import parse_spec
    >>> spec = parse_spec({"study": "s", "strategy": "naive", "stream": {"num_tasks": 2},
    ...                    "search": {"order": "permutation"}})
    >>> check_name(tempfile.mkdtemp(), spec, "tune", resume=False)   # a new name: fine
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llray.errors import ConfigError

BACKENDS = ("tune", "optuna")


def check_name(
    output: str | Path,
    study: Any,
    backend: str,
    resume: bool,
    storage: str | None = None,
    joining: bool = False,
) -> None:
    """Raise :class:`ConfigError` when ``study.study`` is already used in ``output``.

    Args:
        output: the results directory.
        study: the :class:`~llray.tuning.spec.StudySpec`.
        backend: ``tune`` or ``optuna``, the backend about to run.
        resume: ``--resume`` was given.
        storage: the Optuna storage of ``--backend optuna`` (default: the journal file).
        joining: a process of a shared Optuna study (``--worker`` given).
    """
    name = study.study
    other = "optuna" if backend == "tune" else "tune"
    if _has_state(output, study, other, None):
        raise ConfigError("study", f"{name!r} in {output} was run with --backend {other}; "
                                   f"another backend would mix two studies under one name. "
                                   f"Use --backend {other} --resume, or another study name "
                                   f"or --output")
    if resume or (backend == "optuna" and joining):
        return
    if _has_state(output, study, backend, storage):
        if backend == "tune":
            return  # tune_backend.check_start refuses it, naming Tune's folder
        raise ConfigError("study", f"{name!r} already exists in the Optuna storage "
                                   f"{storage or 'under ' + str(output)}; pass --resume to "
                                   f"add trials to it (or --worker K for a process of a "
                                   f"shared study), or choose another study name")
    if _has_runs(output, name):
        raise ConfigError("study", f"the results in {output} already hold runs of "
                                   f"experiment {name!r}; a new study under this name would "
                                   f"be merged with them. Pass --resume to add to it, or "
                                   f"choose another study name or --output")


def _has_state(output: str | Path, study: Any, backend: str, storage: str | None) -> bool:
    if backend == "tune":  # OUTPUT/tune/STUDY (tune_backend.study_dir), without importing Ray
        return _exists("/".join([str(output).rstrip("/"), "tune", study.study]))
    from llray.tuning.optuna_backend import default_storage

    return _optuna_has(storage or default_storage(output, study), study.study)


def _exists(path: str) -> bool:
    if "://" not in path:
        return Path(path).exists()
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def _optuna_has(storage: str, name: str) -> bool:
    """Whether ``storage`` (journal file or RDB URL) holds a study ``name``; never creates
    a storage that is not there."""
    import optuna

    from llray.tuning.optuna_backend import make_storage

    if "://" not in storage and not Path(storage).is_file():
        return False
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        return False
    return name in optuna.get_all_study_names(make_storage(storage))


def _has_runs(output: str | Path, name: str) -> bool:
    from llray.results import ResultsError, load_runs

    try:
        return len(load_runs(output, columns=["run_id"], experiment=name)) > 0
    except (ResultsError, ConfigError, FileNotFoundError):
        return False
