"""Ray, started the way recon3d needs it: no dashboard, no usage statistics, no network; and the shard writer's unit
of work as Ray tasks."""

from __future__ import annotations

import collections
import os
from typing import Iterator, List, Optional


def init_ray(address: str = "", num_cpus: Optional[int] = None) -> None:
    """Connect to a running cluster (`address`, or RAY_ADDRESS) or start a local one; idempotent."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    try:
        import ray
    except ImportError:
        raise ImportError("Ray is not installed: pip install 'recon3d[ray]' (or 'ray[tune]')") from None
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # "local": always a fresh local instance, never a cluster some other job left in /tmp/ray
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def ray_ordered_map(jobs: List[tuple], workers: int) -> Iterator[tuple]:
    """The results of the shard writer's _work in job order, computed as Ray tasks (at most 4 x workers in flight).
    The same unit of work as the process pool, so the shards come out byte for byte the same; a task whose worker
    dies becomes a reject with the reason, as in the process pool."""
    import ray

    from recon3d.data.writer import _DIED, _work

    init_ray(num_cpus=None)
    remote = ray.remote(num_cpus=1, max_retries=0)(_work)
    env = {"env_vars": {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                          "NUMBA_NUM_THREADS")}}
    pending = collections.deque(jobs)
    window: collections.deque = collections.deque()
    while pending or window:
        while pending and len(window) < 4 * max(1, workers):
            job = pending.popleft()
            window.append((job, remote.options(runtime_env=env).remote(job)))
        job, ref = window.popleft()
        try:
            yield ray.get(ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayTaskError) as err:
            item = job[0]
            crashed = isinstance(err, ray.exceptions.WorkerCrashedError)
            yield "reject", {"path": item.path, "key": item.key,
                             "reason": _DIED if crashed else f"Ray task failed: {str(err).splitlines()[0][:200]}"}
