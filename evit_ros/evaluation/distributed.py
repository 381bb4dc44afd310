"""Scoring work units on a Ray cluster, with exactly the results of the in-process run.

Each Ray worker is an actor that loads the model once and scores units with the same
:func:`~evit_ros.evaluation.runner.score_unit` the in-process path uses; the driver hands one unit at a time
to each idle actor (largest first, so a long recording does not become the tail) and merges the integer
confusion matrices, so the split and the placement cannot change a score.

Faults: an actor whose process dies is restarted by Ray (``max_restarts``) and its in-flight unit retried
(``max_task_retries``); a unit is scored from scratch on retry, so nothing is counted twice. A unit that keeps
killing workers ends up as an error for its source, not a hung run. ``KeyboardInterrupt`` kills the actors and
shuts the cluster connection down before it propagates.

``ray`` is imported only here, and only when a function needs it.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from evit_ros.evaluation.classmap import ClassMap
from evit_ros.evaluation.plan import EvalOptions, SourcePlan, WorkUnit, auto_chunk_frames, split_units
from evit_ros.evaluation.runner import Progress, UnitResult, score_unit

__all__ = ["LOCAL_ENV", "RayRun", "ScorerPool", "import_ray", "ray_session", "score_units_on_ray"]

# A cluster started here stays on this machine: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray takes 127.0.0.1 as
# the node address (every server listens there), and usage statistics are never sent out.
_LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOCAL_ENV = {_LOOPBACK_VAR: "0", "RAY_USAGE_STATS_ENABLED": "0"}


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("--ray needs the 'ray' package: pip install 'evit_ros[ray]' (or: pip install ray)") from exc
    return ray


@contextmanager
def ray_session(address: str = "local", num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[Any]:
    """Start a local cluster (``local``), join a running one (``auto``) or connect to ``ADDRESS``; shut down after.

    A local cluster gets :data:`LOCAL_ENV` (where the variables are unset), no dashboard, and ``num_cpus`` /
    ``num_gpus`` as its resources; ``ray.shutdown()`` at the end stops it. For a cluster joined by address,
    the shutdown only disconnects this driver. Worker logs stay in Ray's session log folder (not echoed here):
    errors come back as results.
    """
    on_this_machine = address == "local" or address.split("://")[-1].rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
    if on_this_machine:  # a loopback address must stay one: Ray would otherwise swap in the node's own IP
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
    ray = import_ray()
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process")
    if address == "local":
        # Ray reads the variable once, when it is imported: a module imported before it was set would start
        # a cluster listening on every interface.
        constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
        if os.environ[_LOOPBACK_VAR] == "0" and getattr(constants, "ENABLE_RAY_CLUSTER", False):
            raise RuntimeError(
                f"ray was imported before {_LOOPBACK_VAR}=0 was set, so a local cluster would not stay on "
                "127.0.0.1: set it in the environment before starting Python"
            )
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 logging_level="WARNING", log_to_driver=False)  # fmt: skip
    else:
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:  # no cluster there, or a malformed address
            hint = " (start one with `ray start --head`, or use --ray local)" if address == "auto" else ""
            raise RuntimeError(f"cannot join the Ray cluster {address!r}{hint}: {_first_line(exc)}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


class _Scorer:
    """One worker: the model is built once, then scores any number of units."""

    def __init__(self, options: EvalOptions, class_map: ClassMap, segmenter_kwargs: dict[str, Any] | None) -> None:
        self.options, self.class_map = options, class_map
        self.segmenter = None
        if segmenter_kwargs is not None:
            from evit_ros.pipeline.allocation import retain_freed_memory
            from evit_ros.pipeline.segmenter import Segmenter

            retain_freed_memory()  # a worker process scores frame after frame, like a node

            self.segmenter = Segmenter(**segmenter_kwargs)

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> dict[str, Any]:
        return dict(self.segmenter.describe()) if self.segmenter is not None else {}

    def score(self, unit: WorkUnit) -> UnitResult:
        return score_unit(unit, self.options, self.class_map, self.segmenter)


class ScorerPool:
    """``num_workers`` scorer actors on the connected cluster (:func:`ray_session` first)."""

    def __init__(
        self,
        num_workers: int,
        options: EvalOptions,
        class_map: ClassMap,
        segmenter_kwargs: dict[str, Any] | None = None,
        num_cpus_per_worker: float = 1,
        num_gpus_per_worker: float = 0,
        max_restarts: int = 3,
        max_task_retries: int = 3,
    ) -> None:
        if num_workers <= 0:
            raise ValueError(f"need at least one worker, got {num_workers}")
        self.ray = import_ray()
        actor = self.ray.remote(_Scorer).options(
            num_cpus=num_cpus_per_worker,
            num_gpus=num_gpus_per_worker,
            max_restarts=max_restarts,
            max_task_retries=max_task_retries,
        )
        # Small constructor arguments travel inline with the actor, so a restarted actor never depends on an
        # object-store copy that may be gone.
        small = class_map.compact()
        self.actors = [actor.remote(options, small, segmenter_kwargs) for _ in range(num_workers)]

    def pids(self) -> list[int]:
        """The worker processes' ids (waits until every model is loaded)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def describe(self) -> dict[str, Any]:
        return self.ray.get(self.actors[0].describe.remote())

    def run(
        self,
        units: Sequence[WorkUnit],
        progress: Progress | None = None,
        on_submit: Callable[[int, WorkUnit], None] | None = None,
    ) -> list[UnitResult]:
        """Score every unit, one at a time per actor, largest first; results in completion order.

        ``on_submit(worker_index, unit)`` is called after each hand-out (monitoring; fault-injection tests).
        """
        from ray.exceptions import RayActorError, RayError

        ray = self.ray
        order = sorted(units, key=lambda u: -1 if u.frames_hint is None else -u.frames_hint)
        pending: deque[WorkUnit] = deque(order)
        idle = list(range(len(self.actors)))
        inflight: dict[Any, tuple[int, WorkUnit]] = {}
        results: list[UnitResult] = []
        try:
            while pending or inflight:
                while idle and pending:
                    worker, unit = idle.pop(0), pending.popleft()
                    inflight[self.actors[worker].score.remote(unit)] = (worker, unit)
                    if on_submit is not None:
                        on_submit(worker, unit)
                if not inflight:  # every worker is gone
                    results += [UnitResult(u, error="no Ray worker left to score it") for u in pending]
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    worker, unit = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                        idle.append(worker)
                    except RayActorError as exc:  # restarts and retries used up: this worker is gone for good
                        result = UnitResult(unit, error=f"Ray worker died while scoring it: {_first_line(exc)}")
                    except RayError as exc:
                        result = UnitResult(unit, error=f"Ray task failed: {_first_line(exc)}")
                        idle.append(worker)
                    results.append(result)
                    if progress is not None:
                        progress.frames(result.frames)
                        progress.unit_done(unit)
        except BaseException:  # KeyboardInterrupt included: stop the cluster work, leave nothing running
            for actor in self.actors:
                ray.kill(actor, no_restart=True)
            raise
        return results

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class RayRun:
    """Results of a Ray run and what it cost to get going."""

    results: list[UnitResult]
    units: list[WorkUnit]
    workers: int
    startup_s: float  # cluster start / connect
    ready_s: float  # until every worker had its model loaded
    score_s: float
    model: dict[str, Any] = field(default_factory=dict)


def _default_workers(ray: Any, num_cpus_per_worker: float, num_gpus_per_worker: float) -> int:
    resources = ray.cluster_resources()
    if num_gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // num_gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // max(num_cpus_per_worker, 1e-9)))


def score_units_on_ray(
    plans: Sequence[SourcePlan],
    options: EvalOptions,
    class_map: ClassMap,
    segmenter_kwargs: dict[str, Any] | None = None,
    address: str = "local",
    num_workers: int | None = None,
    num_cpus_per_worker: float = 1,
    num_gpus_per_worker: float = 0,
    local_cpus: int | None = None,
    chunk_frames: int | None = None,
    show_progress: bool = True,
    max_restarts: int = 3,
    max_task_retries: int = 3,
) -> RayRun:
    """Score the planned sources on Ray (see :func:`ray_session` for ``address``); one model per worker.

    ``num_workers`` defaults to what the cluster's CPUs (or GPUs, with ``num_gpus_per_worker``) allow, never
    more than there are units. A local cluster gets ``local_cpus`` CPUs (default: enough for the workers).
    Sources are split into chunks of ``chunk_frames`` frames (``None``: about four units per worker; 0: whole
    sources).
    """
    if num_workers is not None and num_workers <= 0:
        raise ValueError(f"--num-workers must be positive, got {num_workers}")
    if local_cpus is None and num_workers is not None:
        local_cpus = max(1, int(num_workers * num_cpus_per_worker + 0.999))
    t0 = time.perf_counter()
    with ray_session(address, num_cpus=local_cpus if address == "local" else None) as ray:
        t_started = time.perf_counter()
        workers = num_workers or _default_workers(ray, num_cpus_per_worker, num_gpus_per_worker)
        if chunk_frames is None:
            chunk_frames = auto_chunk_frames(plans, workers)
        units = split_units(plans, chunk_frames or None)
        workers = max(1, min(workers, len(units)))
        pool = ScorerPool(workers, options, class_map, segmenter_kwargs, num_cpus_per_worker, num_gpus_per_worker,
                          max_restarts, max_task_retries)  # fmt: skip
        progress = None
        try:
            pool.pids()
            model = pool.describe()
            t_ready = time.perf_counter()
            progress = Progress(units, show_progress)
            results = pool.run(units, progress)
            t_done = time.perf_counter()
        finally:
            if progress is not None:
                progress.close()
            pool.close()
    return RayRun(results, units, workers, t_started - t0, t_ready - t_started, t_done - t_ready, model)
