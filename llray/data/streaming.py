"""Streams larger than memory: a shards stream's tasks read batch by batch, never whole.

With ``stream.storage: streaming`` (or ``auto`` on a large stream, see
:func:`choose_storage`) a :class:`~llray.data.TaskStream` carries no tensors: it carries
a :class:`StreamedData` (the :class:`~llray.data.shards.ShardLayout` and how to read it),
and the learner reads a task's rows batch by batch from its Parquet shards while it
trains and evaluates, so memory holds a shuffle window and a chunk read ahead, never a
task. Two readers give the same rows in the same order: ``arrow`` (default) reads the
files with pyarrow in the learner's process, one chunk ahead on a thread; ``ray_data``
reads them as a Ray Dataset (``ray.data.read_parquet`` with
``DataContext.execution_options.preserve_order``), whose read tasks Ray schedules (they
need CPUs beside the learner actors, and each pass pays the executor's start-up).

Shuffle (one per epoch, drawn from the run's data-order generator ``ctx.generator``):

1. the order of the epoch's files is a ``torch.randperm`` of them;
2. ``m = stream.interleave`` files are read at once: lane ``k`` reads files ``k, k + m,
   ...`` of that order, and the lanes take turns giving ``ceil(W / m)`` rows each (``W =
   stream.shuffle_buffer``), whatever the record batches or Ray Data blocks;
3. that row sequence is cut into windows of ``W`` rows (rows left over from the previous
   window's last partial batch first); each window is permuted by ``torch.randperm`` and
   cut into batches of ``train.batch_size``; the rows after the last full batch of a
   window move on to the next window; the last window also yields its partial batch.

So an epoch is a pure function of the seed, the config and the files' row counts, but a
different permutation than the in-memory path's one ``randperm`` over the task (equal in
distribution when a task fits in one window and one file). Evaluation and the replay
buffer read splits in their stored order, in batches of exactly ``eval_batch_size`` /
``batch_size`` rows, so R does not depend on how the files were cut into blocks.

Example:
    >>> choose_storage("auto", 10 * 2**20), choose_storage("auto", 5 * 2**30)
    ('memory', 'streaming')
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llray.data.shards import ShardLayout
from llray.errors import ConfigError

STORAGES = ("memory", "streaming", "auto")
#: ``auto`` streams a shards stream whose decoded size exceeds this many bytes. A fixed
#: size, not a share of this machine's memory, so that a config (and its run_id) means the
#: same work on every machine: about half of Ray's default object store (30% of memory)
#: on a 24 GiB machine.
AUTO_STREAM_BYTES = 4 * 2**30
DEFAULT_SHUFFLE_BUFFER = 8192
DEFAULT_INTERLEAVE = 4
READERS = ("arrow", "ray_data")
#: bytes of decoded features per record batch the arrow reader hands over at a time
CHUNK_BYTES = 2 * 2**20
#: Strategies whose training reads a task only through minibatches: they can stream.
STREAMING_STRATEGIES = ("derpp", "expand", "joint", "lwf", "naive", "progressive", "replay", "si")


def choose_storage(storage: str, decoded_bytes: int, threshold: int = AUTO_STREAM_BYTES) -> str:
    """``"memory"`` or ``"streaming"``: ``auto`` streams when ``decoded_bytes`` (the
    features of every split, decoded) exceed ``threshold`` (:data:`AUTO_STREAM_BYTES`)."""
    assert storage in STORAGES, storage
    if storage != "auto":
        return storage
    return "streaming" if decoded_bytes > threshold else "memory"


@dataclass(frozen=True)
class StreamedData:
    """What a streamed :class:`~llray.data.TaskStream` carries instead of tensors."""

    layout: ShardLayout
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    reader: str = "arrow"
    interleave: int = DEFAULT_INTERLEAVE

    def open(self, device: torch.device | str = "cpu") -> "ShardReader":
        """A reader of these shards that puts batches on ``device``."""
        return ShardReader(self.layout, self.shuffle_buffer, device, self.reader,
                           interleave=self.interleave)

    def rows(self, task: int, split: str) -> int:
        return self.layout.rows(task, split)


def _ray_data_context() -> Any:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows in file order: runs are reproducible
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ctx


class ShardReader:
    """Reads a :class:`ShardLayout`'s splits batch by batch (pyarrow here, or Ray Data).

    Args:
        layout: the shards (files, columns, shape, dtype).
        shuffle_buffer: rows per shuffle window (memory: this many decoded rows).
        device: where batches go.
        reader: ``"arrow"`` (default: pyarrow reads the files in this process, one
            chunk ahead on a thread) or ``"ray_data"`` (a Ray Dataset per pass, its read
            tasks scheduled by Ray: they need CPUs beside the learner actors).
        read_cpus: CPUs each Ray Data read task asks for.
        interleave: files read at once in a training epoch (a window mixes their rows).
    """

    def __init__(self, layout: ShardLayout, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 device: torch.device | str = "cpu", reader: str = "arrow",
                 read_cpus: float = 1.0, interleave: int = DEFAULT_INTERLEAVE) -> None:
        assert reader in READERS, reader
        self.reader = reader
        self.layout = layout
        self.shuffle_buffer = shuffle_buffer
        self.device = torch.device(device)
        self.read_cpus = read_cpus
        self.interleave = interleave

    # -- reading -------------------------------------------------------------------------
    def _files(self, tasks: Sequence[int], split: str) -> list[tuple[str, int, int]]:
        """``(path, rows, task)`` of ``tasks``' ``split`` files, in task then path order."""
        out = []
        for t in tasks:
            sf = self.layout.split(t, split)
            out += [(p, n, t) for p, n in zip(sf.files, sf.rows) if n > 0]
        return out

    def _chunks(self, files: list[tuple[str, int, int]]
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(x, y, t)`` numpy chunks of ``files``' rows, in exactly that file order."""
        if not files:
            return
        tables = self._ray_tables(files) if self.reader == "ray_data" else self._arrow_tables(files)
        task_of_row = np.repeat([t for _, _, t in files], [n for _, n, _ in files])
        pos = 0
        for table in tables:
            if table.num_rows == 0:
                continue
            x, y = self.layout.decode(table)
            yield x, y, task_of_row[pos:pos + len(y)]
            pos += len(y)
        if pos != len(task_of_row):
            raise ConfigError("stream.path", f"read {pos} rows from {self.layout.uri!r}, their "
                                             f"footers say {len(task_of_row)}: files changed?")

    def _arrow_tables(self, files: list[tuple[str, int, int]]) -> Iterator[Any]:
        """Record batches read in this process by pyarrow, one chunk ahead on a thread."""
        lay = self.layout

        def read() -> Iterator[Any]:
            import pyarrow.parquet as pq

            for path, _, _ in files:
                with lay.filesystem.open_input_file(path) as fh:
                    yield from pq.ParquetFile(fh).iter_batches(
                        batch_size=rows, columns=[lay.x_column, lay.label_column])

        rows = max(1, CHUNK_BYTES // lay.row_bytes)
        return _prefetch(read(), depth=1)

    def _ray_tables(self, files: list[tuple[str, int, int]]) -> Iterator[Any]:
        """Blocks of a Ray Dataset over ``files`` (``read_parquet``, order preserved)."""
        import ray.data

        _ray_data_context()
        lay = self.layout
        ds = ray.data.read_parquet(
            [p for p, _, _ in files], filesystem=lay.filesystem, partitioning=None,
            file_extensions=None, num_cpus=self.read_cpus,
        ).select_columns([lay.x_column, lay.label_column])
        return ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)

    # -- training --------------------------------------------------------------------------
    def train_batches(self, tasks: Sequence[int], generator: torch.Generator,
                      batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """One epoch of shuffled ``(x, y, t)`` batches over ``tasks``' training rows.

        Draws the file order and one permutation per window from ``generator`` (see the
        module docstring).
        """
        files = self._files(tasks, "train")
        perm = torch.randperm(len(files), generator=generator).tolist()
        files = [files[i] for i in perm]
        window = max(self.shuffle_buffer, batch_size)
        pending: list[tuple[np.ndarray, ...]] = []
        count = 0
        for chunk in self._interleaved(files, window):
            pending.append(chunk)
            count += len(chunk[1])
            while count >= window:
                x, y, t = (np.concatenate(a) for a in zip(*pending))
                rest = (x[window:], y[window:], t[window:])
                tail = yield from self._window(x[:window], y[:window], t[:window], generator,
                                               batch_size, last=False)
                pending = [tail, rest]
                count = len(tail[1]) + len(rest[1])
        if count:
            x, y, t = (np.concatenate(a) for a in zip(*pending))
            yield from self._window(x, y, t, generator, batch_size, last=True)

    def _interleaved(self, files: list[tuple[str, int, int]], window: int
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``files``' rows, ``interleave`` files at a time: lane ``k`` reads files
        ``k, k + m, k + 2m, ...`` in order, and the lanes take turns giving
        ``ceil(window / m)`` rows each, so a shuffle window mixes ``m`` files."""
        m = max(1, min(self.interleave, len(files)))
        unit = -(-window // m)
        lanes = [_rechunk(self._chunks(files[k::m]), unit) for k in range(m)]
        while lanes:
            alive = []
            for lane in lanes:
                chunk = next(lane, None)
                if chunk is not None:
                    yield chunk
                    alive.append(lane)
            lanes = alive

    def _window(self, x: np.ndarray, y: np.ndarray, t: np.ndarray, generator: torch.Generator,
                batch_size: int, last: bool):
        """Permute one window and yield its batches; return the rows after the last full
        batch (none when ``last``: then the partial batch is yielded too)."""
        p = torch.randperm(len(y), generator=generator).numpy()
        x, y, t = x[p], y[p], t[p]
        full = len(y) if last else len(y) - len(y) % batch_size
        for i in range(0, full, batch_size):
            yield self._tensors(x[i:i + batch_size], y[i:i + batch_size], t[i:i + batch_size])
        return x[full:], y[full:], t[full:]

    def _tensors(self, x: np.ndarray, y: np.ndarray, t: np.ndarray
                 ) -> tuple[Tensor, Tensor, Tensor]:
        d = self.device
        return (torch.from_numpy(np.ascontiguousarray(x)).to(d), torch.from_numpy(y).to(d),
                torch.from_numpy(np.ascontiguousarray(t, dtype=np.int64)).to(d))

    # -- in stored order -----------------------------------------------------------------
    def ordered_batches(self, tasks: Sequence[int], split: str, batch_size: int
                        ) -> Iterator[tuple[Tensor, Tensor, int]]:
        """``(x, y, task)`` batches of ``tasks``' ``split`` in stored order, ``batch_size``
        rows each (fewer only at a task's end); a batch never mixes tasks."""
        buf: list[tuple[np.ndarray, np.ndarray]] = []
        count, current = 0, None
        for x, y, t in self._chunks(self._files(tasks, split)):
            for task in _runs(t):
                sel = t == task
                if current is not None and task != current and count:
                    yield self._flush(buf, current)
                    buf, count = [], 0
                current = task
                buf.append((x[sel], y[sel]))
                count += int(sel.sum())
                while count >= batch_size:
                    xs, ys = (np.concatenate(a) for a in zip(*buf))
                    yield self._flush([(xs[:batch_size], ys[:batch_size])], task)
                    buf, count = [(xs[batch_size:], ys[batch_size:])], len(ys) - batch_size
        if count:
            yield self._flush(buf, current)

    def _flush(self, buf: list[tuple[np.ndarray, np.ndarray]], task: int
               ) -> tuple[Tensor, Tensor, int]:
        xs, ys = (np.concatenate(a) for a in zip(*buf))
        d = self.device
        return torch.from_numpy(np.ascontiguousarray(xs)).to(d), torch.from_numpy(ys).to(d), task


def _rechunk(chunks: Iterator[tuple[np.ndarray, ...]], rows: int
             ) -> Iterator[tuple[np.ndarray, ...]]:
    """The same rows in chunks of exactly ``rows`` (the last one may be shorter), so what
    follows does not depend on how a reader cut its record batches."""
    pending: list[tuple[np.ndarray, ...]] = []
    count = 0
    for chunk in chunks:
        pending.append(chunk)
        count += len(chunk[0])
        while count >= rows:
            joined = tuple(np.concatenate(a) for a in zip(*pending))
            yield tuple(a[:rows] for a in joined)
            pending, count = [tuple(a[rows:] for a in joined)], count - rows
    if count:
        yield tuple(np.concatenate(a) for a in zip(*pending))


def _runs(t: np.ndarray) -> list[int]:
    """The distinct values of ``t`` in order of first appearance (tasks are contiguous)."""
    if len(t) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    return [int(v) for v in t[starts]]


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` produced on a background thread, at most ``depth`` ahead (bounded memory).

    An error in the producer is raised here; leaving the loop early stops the producer.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)

    thread = threading.Thread(target=produce, daemon=True, name="llray-shards")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def check_streamable(stream: Any, strategy: str, pack: int = 1) -> None:
    """ConfigError (``stream.storage``) when a streamed ``stream`` meets a strategy that
    reads whole tasks (Fisher, gradient memories, exemplar means, ...) or a pack."""
    if stream.streamed is None:
        return
    if strategy not in STREAMING_STRATEGIES:
        raise ConfigError("stream.storage", f"strategy {strategy!r} reads whole tasks and cannot "
                          f"train on a streamed stream; streaming strategies: "
                          f"{', '.join(STREAMING_STRATEGIES)}; or set stream.storage: memory")
    if pack > 1:
        raise ConfigError("stream.storage", "packs (resources.pack > 1) train on in-memory "
                          "streams only; set stream.storage: memory or resources.pack: 1")


def refuse_streamed(stream: Any, command: str) -> None:
    """ConfigError (``stream.storage``) when ``command`` gets a streamed ``stream``: only
    ``llray run`` sweeps stream; taskonomy, curriculum and tune learn in-memory streams."""
    if stream.streamed is not None:
        raise ConfigError("stream.storage", f"llray {command} learns in-memory streams only "
                          "(streaming is for llray run); set stream.storage: memory")
