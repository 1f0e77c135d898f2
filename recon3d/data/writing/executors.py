"""Where the shard writer's unit of work (prepare one input) runs: in order, in a process pool that survives a dead
worker, or as Ray tasks; and Ray started the way recon3d needs it (no dashboard, no usage statistics, no network).
"""

from __future__ import annotations

import collections
import ctypes
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator, List, Optional

from recon3d.data.writing.formats import RejectError
from recon3d.data.writing.prepare import prepare


def prepare_job(job) -> tuple:
    item, root, cfg = job
    try:
        return "ok", prepare(item, root, cfg)
    except RejectError as err:
        return "reject", {"path": item.path, "key": item.key, "reason": str(err)}
    except MemoryError:
        return "reject", {"path": item.path, "key": item.key, "reason": "out of memory while preparing"}
    except Exception as err:  # an input that breaks a library in a way we did not foresee: record it, go on
        message = str(err).splitlines()[0][:200] if str(err) else ""
        return "reject", {"path": item.path, "key": item.key,
                          "reason": f"unexpected {type(err).__name__}: {message}"}


def _init_worker(parent: int = 0) -> None:
    # one process per core: keep numeric libraries single-threaded inside each worker
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when the process that started it dies (kill -9 or SIGTERM of a build left
    its pool workers running, each holding its memory); elsewhere nothing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


DIED = "worker process died while preparing this input (killed: out of memory, or a crash in a native library)"


def ordered_map(jobs: List[tuple], workers: int) -> Iterator[tuple]:
    """Results of prepare_job in job order, with at most 4 x workers jobs in flight (bounded memory).

    A worker that dies (OOM killer, segfault) breaks the whole pool and every job in flight with it. Those jobs are
    then run again one at a time, each in a pool of its own: the one that kills its worker again is rejected with a
    reason, the others give their results, and the build goes on with a fresh pool.
    """
    if workers <= 1:
        for job in jobs:
            yield prepare_job(job)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),))

    def alone(job: tuple) -> tuple:
        with ProcessPoolExecutor(1, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)) as single:
            try:
                return single.submit(prepare_job, job).result()
            except BrokenProcessPool:
                item = job[0]
                return "reject", {"path": item.path, "key": item.key, "reason": DIED}

    pending = collections.deque(jobs)
    pool = new_pool()
    window: collections.deque = collections.deque()
    try:
        while pending or window:
            while pending and len(window) < 4 * workers:
                job = pending.popleft()
                window.append((job, pool.submit(prepare_job, job)))
            job, future = window.popleft()
            try:
                yield future.result()
            except BrokenProcessPool:
                lost = [job] + [j for j, _ in window]
                window.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                for lost_job in lost:
                    yield alone(lost_job)
                pool = new_pool()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


RAY_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode (see init_ray)


def init_ray(address: str = "", num_cpus: Optional[int] = None) -> None:
    """Connect to a running cluster (`address`, or RAY_ADDRESS) or start a local one on loopback; idempotent."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    address = address or os.environ.get("RAY_ADDRESS", "")
    try:
        import ray  # noqa: PLC0415 - the ray extra
    except ImportError:
        raise ImportError("Ray is not installed: pip install 'recon3d[ray]' (or 'ray[tune]')") from None
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        _init_local_ray(ray, num_cpus)


def _init_local_ray(ray, num_cpus: Optional[int]) -> None:
    """A fresh local Ray on loopback. Ray turns a node address of 127.0.0.1 into the machine's routed one, and then
    binds its servers to all interfaces, unless its single-machine mode is on (the default on Windows and macOS, named
    for them): on, every Ray process talks and listens on 127.0.0.1 only. Its daemons read the mode from the
    environment when they start (and pass it to their workers), so it is set only while they start: left in this
    process's environment it would reach every process started later, a SLURM job's Ray worker among them, which
    could then join no cluster."""
    from ray._private import ray_constants  # noqa: PLC0415 - the ray extra

    before = os.environ.get(RAY_LOCAL_ONLY)
    os.environ[RAY_LOCAL_ONLY] = before if before is not None else "0"
    if os.environ[RAY_LOCAL_ONLY] == "0":  # read when ray was imported, maybe before this call (by ray.tune)
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        # "local": always a fresh local instance, never a cluster some other job left in /tmp/ray
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
    finally:
        if before is None:
            os.environ.pop(RAY_LOCAL_ONLY, None)


def ray_ordered_map(jobs: List[tuple], workers: int) -> Iterator[tuple]:
    """The results of prepare_job in job order, computed as Ray tasks (at most 4 x workers in flight).
    The same unit of work as ordered_map, so the shards come out byte for byte the same; a task whose worker
    dies becomes a reject with the reason, as in the process pool."""
    import ray  # noqa: PLC0415 - the ray extra

    init_ray(num_cpus=None)
    remote = ray.remote(num_cpus=1, max_retries=0)(prepare_job)
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
                             "reason": DIED if crashed else f"Ray task failed: {str(err).splitlines()[0][:200]}"}
