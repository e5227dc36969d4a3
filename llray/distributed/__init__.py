"""Ray at the edge: learner actors, the sweep driver, checkpoints, the Ray connection.

- :mod:`~llray.distributed.session`: start an embedded Ray (127.0.0.1 only, token
  authentication on) or join a cluster; warnings for node-local storage.
- :mod:`~llray.distributed.streaming`: a task stream in the object store, put once and
  read zero-copy by every actor.
- :mod:`~llray.distributed.checkpoint`: per-task checkpoints on a local path or any
  ``pyarrow.fs`` URI, written atomically, read with ``weights_only=True``.
- :mod:`~llray.distributed.actor`: the learner actor (one run at a time, on the device
  Ray gave it).
- :mod:`~llray.distributed.sweep`: the driver (backpressure, restarts from checkpoints,
  results written as runs finish).

Importing ``actor``, ``streaming`` or ``sweep`` imports Ray; callers that start an
embedded Ray must call :func:`llray.distributed.session.loopback_only` before the first
import of ``ray``.
"""
