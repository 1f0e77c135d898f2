"""Writing shards: a deterministic plan, atomic and resumable shard files, a manifest, and rejects.jsonl.

The plan fixes which inputs go into which shard before any work: items sorted by key, split by the source's split
or the key's hash, then cut into shards of `samples_per_shard` items per split. A rejected item leaves its shard one
sample short; it never moves other items, so shard contents do not depend on what failed or on the worker count.

Each shard is written to `<name>.tar.tmp`, renamed to `<name>.tar`, and only then is its sidecar `<name>.json`
(count, sha256, rejects, plan hash) written, also through a temp name. A shard counts as finished only when its
sidecar exists with the current plan hash and the tar has the recorded size, so a rerun after kill -9 redoes the
shard that was in flight and nothing else. The manifest is written last, from the sidecars.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from recon3d.config import Config, to_dict
from recon3d.data import schema
from recon3d.data.formats import RejectError
from recon3d.data.prepare import Prepared, prepare
from recon3d.data.sources import Item, assign_split, discover

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
BUILD_LOG = "build_log.json"
_SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}$")


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes to `path` through a temp name and rename, so readers never see a partial file (the temp name
    carries the process id: two processes writing the same file never share a temp file)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ShardPlan:
    name: str  # e.g. train-000003
    split: str
    items: List[Item]
    plan_hash: str = ""


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict
    rejects: List[dict]
    prepared: int  # items prepared by this run (0 when everything was already done)
    seconds: float
    stage_seconds: Dict[str, List[float]] = field(default_factory=dict)


def prep_config(cfg: Config) -> dict:
    """The part of the config that decides shard contents (recorded in the manifest, hashed into the plan)."""
    source = to_dict(cfg.source)
    source.pop("root")
    return {"source": source, "geometry": to_dict(cfg.geometry), "render": to_dict(cfg.render),
            "shards": {"samples_per_shard": cfg.shards.samples_per_shard, "split": list(cfg.shards.split),
                       "seed": cfg.shards.seed}}


def _input_size(root: Path, item: Item) -> int:
    path = root if root.is_file() else root / item.path
    try:
        return path.stat().st_size
    except OSError:
        return -1


def plan_shards(items: Iterable[Item], cfg: Config) -> List[ShardPlan]:
    """Cut the items into named shards per split; each plan carries a hash of its inputs and the prep config."""
    by_split: Dict[str, List[Item]] = {s: [] for s in schema.SPLITS}
    for item in sorted(items, key=lambda i: i.key):
        by_split[assign_split(item, cfg.shards.split)].append(item)
    root = Path(cfg.source.root)
    common = json.dumps([schema.FORMAT, prep_config(cfg)], sort_keys=True)
    plans = []
    for split in schema.SPLITS:
        group = by_split[split]
        step = cfg.shards.samples_per_shard
        for index, start in enumerate(range(0, len(group), step)):
            chunk = group[start:start + step]
            digest = hashlib.sha256(common.encode())
            for item in chunk:
                digest.update(json.dumps([item.key, item.path, item.kind, item.row, item.up, item.front,
                                          _input_size(root, item)]).encode())
            plans.append(ShardPlan(f"{split}-{index:06d}", split, chunk, digest.hexdigest()))
    return plans


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: same inputs -> same bytes
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_sample(tar: tarfile.TarFile, prepared: Prepared) -> None:
    for member in sorted(prepared.members):
        _tar_add(tar, f"{prepared.key}.{member}", prepared.members[member])


def _sidecar(out: Path, name: str) -> Path:
    return out / f"{name}.json"


def finished(out: Path, plan: ShardPlan) -> Optional[dict]:
    """The sidecar of a shard that is complete for this plan, else None."""
    try:
        side = json.loads(_sidecar(out, plan.name).read_text())
    except (OSError, ValueError):
        return None
    tar = out / f"{plan.name}.tar"
    if side.get("plan_hash") != plan.plan_hash or not tar.is_file() or tar.stat().st_size != side.get("bytes"):
        return None
    return side


def _work(job) -> tuple:
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


def _init_worker() -> None:
    # one process per core: keep numeric libraries single-threaded inside each worker
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"


_DIED = "worker process died while preparing this input (killed: out of memory, or a crash in a native library)"


def ordered_map(jobs: List[tuple], workers: int) -> Iterator[tuple]:
    """Results of _work in job order, with at most 4 x workers jobs in flight (bounded memory).

    A worker that dies (OOM killer, segfault) breaks the whole pool and every job in flight with it. Those jobs are
    then run again one at a time, each in a pool of its own: the one that kills its worker again is rejected with a
    reason, the others give their results, and the build goes on with a fresh pool.
    """
    if workers <= 1:
        for job in jobs:
            yield _work(job)
        return
    import multiprocessing

    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)

    def alone(job: tuple) -> tuple:
        with ProcessPoolExecutor(1, mp_context=context, initializer=_init_worker) as single:
            try:
                return single.submit(_work, job).result()
            except BrokenProcessPool:
                item = job[0]
                return "reject", {"path": item.path, "key": item.key, "reason": _DIED}

    pending = collections.deque(jobs)
    pool = new_pool()
    window: collections.deque = collections.deque()
    try:
        while pending or window:
            while pending and len(window) < 4 * workers:
                job = pending.popleft()
                window.append((job, pool.submit(_work, job)))
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


def _finish_shard(out: Path, plan: ShardPlan, tar: tarfile.TarFile, handle, count: int, rejects: List[dict]):
    tar.close()
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    tmp = out / f"{plan.name}.tar.tmp"
    final = out / f"{plan.name}.tar"
    side = {"name": plan.name, "split": plan.split, "samples": count, "bytes": tmp.stat().st_size,
            "sha256": file_sha256(tmp), "keys": [i.key for i in plan.items], "rejects": rejects,
            "plan_hash": plan.plan_hash}
    os.replace(tmp, final)
    atomic_write(_sidecar(out, plan.name), json.dumps(side, indent=1, sort_keys=True).encode())
    return side


def _clean_stale(out: Path, plans: List[ShardPlan], mine: List[ShardPlan]) -> None:
    """Remove half-written files of `mine` (other parts may be writing theirs right now) and shards that belong to
    no plan any more."""
    names, own = {p.name for p in plans}, {p.name for p in mine}
    for path in out.iterdir():
        if path.name.endswith(".tmp"):
            stem = path.name.split(".", 1)[0]
            if stem in own or (len(own) == len(names) and stem not in names):  # a whole build owns every temp file
                path.unlink()
        elif path.suffix in (".tar", ".json") and _SHARD_NAME.match(path.stem) and path.stem not in names:
            path.unlink()  # a shard of an earlier, larger plan


def part_of(plans: List[ShardPlan], index: int, count: int) -> List[ShardPlan]:
    """Part `index` of `count` of the plan: shards dealt largest first to the least-loaded part (ties to the lower
    part), so parts get about the same number of inputs; deterministic, disjoint, and together the whole plan."""
    loads, owner = [0] * count, {}
    for position, plan in sorted(enumerate(plans), key=lambda ip: (-len(ip[1].items), ip[0])):
        part = min(range(count), key=lambda j: (loads[j], j))
        owner[position] = part
        loads[part] += len(plan.items)
    return [plan for position, plan in enumerate(plans) if owner[position] == index]


def build_shards(cfg: Config, *, progress: bool = True, stop_after: int = 0,
                 part: Tuple[int, int] = (0, 1), use_ray: bool = False) -> BuildResult:
    """Prepare every input of cfg.source into shards under cfg.shards.out_dir; resumes finished shards.

    Args:
        stop_after: finish after this many shards of this run (0: all), for tests of interrupted builds.
        part: (index, count): build only that part of the plan (`part_of`: balanced by inputs, disjoint and
            deterministic, for job arrays); the manifest is written by whichever run finds every shard done.
        use_ray: prepare inputs as Ray tasks (a local Ray, or the cluster in RAY_ADDRESS) instead of a process pool;
            the output is the same byte for byte.
    """
    index, count = part
    if not 0 <= index < count:
        raise ValueError(f"part {index}/{count}: need 0 <= index < count")
    started = time.perf_counter()
    out = Path(cfg.shards.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, rejects, kind = discover(cfg.source)
    plans = plan_shards(items, cfg)
    mine = part_of(plans, index, count)
    _clean_stale(out, plans, mine)
    sides = {p.name: finished(out, p) for p in plans}
    pending = [p for p in mine if sides[p.name] is None]
    if stop_after:
        pending = pending[:stop_after]
    jobs = [(item, cfg.source.root, cfg) for p in pending for item in p.items]
    bar = None
    if progress:
        from tqdm import tqdm

        done = sum(len(p.items) for p in mine) - sum(len(p.items) for p in pending)
        bar = tqdm(total=sum(len(p.items) for p in mine), initial=done, unit="shape", desc="shards",
                   file=sys.stderr, dynamic_ncols=True)
    stage_seconds: Dict[str, List[float]] = collections.defaultdict(list)
    if use_ray:
        from recon3d.raytools import ray_ordered_map

        results = ray_ordered_map(jobs, cfg.shards.workers)
    else:
        results = ordered_map(jobs, cfg.shards.workers)
    run_rejects = 0
    for plan in pending:
        handle = open(out / f"{plan.name}.tar.tmp", "wb")
        tar = tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT)
        count, shard_rejects = 0, []
        for _ in plan.items:
            status, payload = next(results)
            if status == "ok":
                write_sample(tar, payload)
                count += 1
                for stage, sec in payload.seconds.items():
                    stage_seconds[stage].append(sec)
            else:
                shard_rejects.append(payload)
                run_rejects += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rejects=run_rejects, refresh=False)
        sides[plan.name] = _finish_shard(out, plan, tar, handle, count, shard_rejects)
    if bar is not None:
        bar.close()
    sides = {name: side or finished(out, plan) for (name, side), plan in zip(sides.items(), plans)}  # other parts
    if any(side is None for side in sides.values()):  # stopped early, or other parts still at work: no manifest
        return BuildResult(out, {}, rejects, len(jobs), time.perf_counter() - started, dict(stage_seconds))
    all_rejects = sorted(rejects + [r for p in plans for r in sides[p.name]["rejects"]],
                         key=lambda r: (r["path"], r["key"]))
    manifest = make_manifest(cfg, kind, plans, sides, all_rejects)
    atomic_write(out / REJECTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in all_rejects).encode())
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    seconds = time.perf_counter() - started
    log = {"finished_unix": time.time(), "seconds": seconds, "workers": cfg.shards.workers, "prepared": len(jobs),
           "stage_seconds_total": {k: sum(v) for k, v in stage_seconds.items()}}
    atomic_write(out / BUILD_LOG, json.dumps(log, indent=1, sort_keys=True).encode())
    return BuildResult(out, manifest, all_rejects, len(jobs), seconds, dict(stage_seconds))


def make_manifest(cfg: Config, kind: str, plans: List[ShardPlan], sides: Dict[str, dict],
                  rejects: List[dict]) -> dict:
    shards = [{k: sides[p.name][k] for k in ("name", "split", "samples", "bytes", "sha256")} for p in plans]
    splits = {s: {"samples": sum(x["samples"] for x in shards if x["split"] == s),
                  "shards": sum(1 for x in shards if x["split"] == s)} for s in schema.SPLITS}
    return {"format": schema.FORMAT, "source": {"root": str(cfg.source.root), "kind": kind},
            "config": prep_config(cfg), "samples": sum(x["samples"] for x in shards), "splits": splits,
            "shards": shards, "rejects": len(rejects)}


def load_manifest(shard_dir: str | Path) -> dict:
    """Read manifest.json of a shard folder; FileNotFoundError names the folder if it has none."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{shard_dir}: no {MANIFEST} (build it with `recon3d shards build`)")
    return json.loads(path.read_text())
