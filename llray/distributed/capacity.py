"""What a Ray cluster can run now, what it can never run, and demand for an autoscaler.

A run's actor asks for a resource *shape* (``{"CPU": 1, "GPU": 0.5}``). The sweep
driver keeps as many runs in flight as the alive nodes fit (:func:`fit`, node by node:
a run's CPUs and GPUs must be on one node), so runs that do not fit wait in the driver,
not as pending actors. A shape that no node can hold (:func:`unsatisfiable`) is a
configuration error on a cluster that cannot grow (the embedded local Ray); on a real
cluster it is stated demand (:func:`request_demand`, the autoscaler's
``request_resources``) and a stated wait (:func:`describe`).

Nothing here starts Ray; the functions that read the cluster (:func:`alive_nodes`,
:func:`request_demand`) need a connected one.

Example:
    >>> nodes = [{"CPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}]
    >>> fit({"CPU": 1.0}, nodes), fit({"CPU": 1.0, "GPU": 0.5}, nodes)
    (6, 2)
    >>> print(unsatisfiable({"CPU": 1.0, "GPU": 2.0}, nodes))
    resources.num_gpus: each run asks for 2 GPU, but no node has that much (largest node: 4 CPU, 1 GPU)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

Shape = Mapping[str, float]  # Ray resource name -> amount, e.g. {"CPU": 1.0, "GPU": 0.5}

# the config field behind each resource a run asks for
FIELDS = {"CPU": "resources.num_cpus", "GPU": "resources.num_gpus"}
_EPS = 1e-6  # Ray keeps resources in units of 1e-4: 3 x 1/3 GPU fit one GPU


def shape_of(resources: object) -> dict[str, float]:
    """The Ray resource shape of a config's ``resources`` (``num_cpus``, ``num_gpus``).

    Example:
        >>> from llray.config import Resources
        >>> shape_of(Resources(num_cpus=1, num_gpus=0.5))
        {'CPU': 1.0, 'GPU': 0.5}
    """
    out = {"CPU": float(resources.num_cpus)}  # type: ignore[attr-defined]
    if resources.num_gpus > 0:  # type: ignore[attr-defined]
        out["GPU"] = float(resources.num_gpus)  # type: ignore[attr-defined]
    return out


def fit(shape: Shape, nodes: Sequence[Mapping[str, float]]) -> int:
    """How many actors of ``shape`` the ``nodes`` hold at once (each on one node)."""
    total = 0
    for node in nodes:
        per_node = [math.floor(node.get(k, 0.0) / v + _EPS) for k, v in shape.items() if v > 0]
        total += min(per_node) if per_node else 0
    return total


def unsatisfiable(shape: Shape, nodes: Sequence[Mapping[str, float]]) -> str | None:
    """Why no node can ever hold one actor of ``shape`` (naming the field), or None."""
    if fit(shape, nodes) > 0:
        return None
    short = [k for k, v in shape.items() if max((n.get(k, 0.0) for n in nodes), default=0.0)
             + _EPS < v] or list(shape)  # each fits somewhere alone, never together
    fields = ", ".join(FIELDS.get(k, f"resources.{k}") for k in short)
    asks = " and ".join(f"{_num(shape[k])} {k}" for k in short)
    largest = max(nodes, key=lambda n: tuple(n.get(k, 0.0) for k in shape), default={})
    where = f"largest node: {_amounts(largest, shape)}" if nodes else "the cluster has no nodes"
    return f"{fields}: each run asks for {asks}, but no node has that much ({where})"


def describe(nodes: Sequence[Mapping[str, float]], free: Mapping[str, float],
             shape: Shape) -> str:
    """One line on what the cluster has: node count, totals and what is free now.

    Example:
        >>> describe([{"CPU": 2.0}, {"CPU": 2.0, "GPU": 1.0}], {"CPU": 1.0}, {"CPU": 1.0})
        '2 alive nodes with 4 CPU, 1 GPU in all, 1 CPU, 0 GPU free now'
    """
    totals = {k: sum(n.get(k, 0.0) for n in nodes) for k in _keys(shape)}
    return (f"{len(nodes)} alive node{'s' if len(nodes) != 1 else ''} with "
            f"{_amounts(totals, shape)} in all, {_amounts(free, shape)} free now")


def waiting_message(shape: Shape, waiting: int, running: int, seconds: float,
                    demand: bool) -> str:
    """The stated wait: what waits, for how long, for what, and what the cluster has."""
    import ray

    need = ", ".join(f"{_num(v)} {k}" for k, v in shape.items())
    ask = " (requested from the autoscaler, if the cluster has one)" if demand else ""
    where = describe(alive_nodes(), ray.available_resources(), shape)
    return (f"llray: waiting {seconds:.0f} s for resources: {waiting} run(s) need {need} "
            f"each{ask}; {running} running; the cluster has {where}")


def alive_nodes() -> list[dict[str, float]]:
    """The total resources of each alive node of the connected Ray cluster."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def request_demand(shape: Shape, count: int) -> None:
    """Ask the autoscaler for room for ``count`` actors of ``shape`` (0: withdraw).

    ``ray.autoscaler.sdk.request_resources`` replaces the previous request and counts
    the resources already in use, so ``count`` is the whole sweep's wish (running plus
    waiting runs). On a cluster without an autoscaler the request is stored and ignored.
    """
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[dict(shape)] * count) if count else request_resources(num_cpus=0)


def embedded_resources(num_cpus: int | None) -> dict[str, float] | None:
    """The resources an embedded local Ray started with ``num_cpus`` will have.

    GPUs are counted the way Ray counts them (its NVIDIA manager, limited by
    ``CUDA_VISIBLE_DEVICES``), so that the resource check can run before Ray starts;
    None when that count is not available in this Ray version.
    """
    out = {"CPU": float(num_cpus or os.cpu_count() or 1)}
    gpus = local_gpus()
    if gpus is None:
        return None
    out["GPU"] = float(gpus)
    return out


def local_gpus() -> int | None:
    """GPUs Ray would detect on this machine (None if Ray's detection is unavailable)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        n = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
    except Exception:  # noqa: BLE001 - a private API: fall back to asking Ray itself
        return None
    return min(n, len(visible)) if visible is not None else n


def _num(x: float) -> str:
    return f"{x:g}"


def _keys(shape: Shape) -> list[str]:
    """The resources a message shows: the shape's, and GPU always."""
    return list(shape) if "GPU" in shape else [*shape, "GPU"]


def _amounts(res: Mapping[str, float], shape: Shape) -> str:
    return ", ".join(f"{_num(res.get(k, 0.0))} {k}" for k in _keys(shape))
