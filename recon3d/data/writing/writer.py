"""Writing shards: a deterministic plan, atomic and resumable shard files, a manifest, and rejects.jsonl.

The plan fixes which inputs go into which shard before any work: items sorted by key, split by the source's split
or the key's hash, then cut into shards of `samples_per_shard` items per split. A rejected item leaves its shard one
sample short; it never moves other items, so shard contents do not depend on what failed or on the worker count.

Each shard is written to `<name>.tar.tmp` under an exclusive advisory lock (flock: two builds into one folder, or a
rerun of one array index while the array or its merge still runs, never write or delete each other's shard in
flight; a shard another build holds is skipped and left to it), renamed to `<name>.tar`, and only then is its
sidecar `<name>.json` (count, sha256, rejects, plan hash) written, also through a temp name. A shard counts as
finished only when its sidecar exists with the current plan hash and the tar has the recorded size, so a rerun after
kill -9 redoes the shard that was in flight and nothing else. The manifest is written last, from the sidecars.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from tqdm import tqdm

from recon3d.config import Config, to_dict
from recon3d.data import schema
from recon3d.data.loading.index import index_path, load_index, write_index
from recon3d.data.loading.shards import MANIFEST, load_manifest, sidecar_path
from recon3d.data.writing.executors import ordered_map, ray_ordered_map
from recon3d.data.writing.prepare import Prepared
from recon3d.data.writing.sources import Item, assign_splits, discover, identical_inputs, keep_together
from recon3d.files import atomic_write, exclusive_lock, file_sha256, temp_writer_gone
from recon3d.storage import is_object_url, mirrored

REJECTS = "rejects.jsonl"
BUILD_LOG = "build_log.json"
_SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}$")


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
    summary: str = ""  # a build into a bucket: `shards summary` of its local mirror, made before the mirror goes


def prep_config(cfg: Config) -> dict:
    """The part of the config that decides shard contents (recorded in the manifest, hashed into the plan)."""
    source = to_dict(cfg.source)
    source.pop("root")
    if source.get("hdf5_point_grid") in ("auto", "256"):  # the default reading: shard sets built before the option
        source.pop("hdf5_point_grid")  # existed keep their plan hashes; `resolution` is recorded for the loader
    return {"source": source, "geometry": to_dict(cfg.geometry), "render": to_dict(cfg.render),
            "shards": {"samples_per_shard": cfg.shards.samples_per_shard, "split": list(cfg.shards.split),
                       "seed": cfg.shards.seed,
                       # only when not the default: shards built before split_by existed keep their plan hashes
                       **({"split_by": cfg.shards.split_by} if cfg.shards.split_by != "hash" else {})}}


def _input_size(root: Path, item: Item) -> int:
    path = root if root.is_file() else root / item.path
    try:
        return path.stat().st_size
    except OSError:
        return -1


def plan_shards(items: Iterable[Item], cfg: Config, identical: Sequence[List[Item]] = ()) -> List[ShardPlan]:
    """Cut the items into named shards per split (each group of `identical` inputs in one split); each plan carries
    a hash of its inputs and the prep config."""
    by_split: Dict[str, List[Item]] = {s: [] for s in schema.SPLITS}
    items = sorted(items, key=lambda i: i.key)
    root = Path(cfg.source.root)
    splits = keep_together(assign_splits(items, cfg.shards.split, cfg.shards.split_by), identical)
    for item in items:
        by_split[splits[item.key]].append(item)
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


def finished(out: Path, plan: ShardPlan) -> Optional[dict]:
    """The sidecar of a shard that is complete for this plan, else None. A complete shard without its index (one
    written before indexes existed, or whose index was deleted) is indexed here rather than rebuilt."""
    side_path = sidecar_path(out, plan.name)
    try:
        side = json.loads(side_path.read_text())
    except (OSError, ValueError):
        return None
    tar = out / f"{plan.name}.tar"
    if side.get("plan_hash") != plan.plan_hash or not tar.is_file() or tar.stat().st_size != side.get("bytes"):
        return None
    if not index_path(tar).is_file() or "index_sha256" not in side:
        side["index_sha256"] = write_index(tar)
        atomic_write(side_path, json.dumps(side, indent=1, sort_keys=True).encode())
    return side


def _finish_shard(out: Path, plan: ShardPlan, tar: tarfile.TarFile, handle, count: int, rejects: List[dict],
                  facts: Dict[str, dict]):
    tar.close()
    handle.flush()
    os.fsync(handle.fileno())
    tmp = out / f"{plan.name}.tar.tmp"
    final = out / f"{plan.name}.tar"
    index_sha256 = write_index(tmp, index_path(final))  # before the tar gets its name: it always has its index
    side = {"name": plan.name, "split": plan.split, "samples": count, "bytes": tmp.stat().st_size,
            "sha256": file_sha256(tmp), "index_sha256": index_sha256,
            "keys": [i.key for i in plan.items], "rejects": rejects, "facts": facts, "plan_hash": plan.plan_hash}
    os.replace(tmp, final)
    handle.close()  # the lock is released only once the shard has its final name
    atomic_write(sidecar_path(out, plan.name), json.dumps(side, indent=1, sort_keys=True).encode())
    return side


def _claim(path: Path):
    """`path` opened for writing (truncated) under an exclusive lock; None while another build holds it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    return os.fdopen(fd, "wb")


def _remove_unless_locked(path: Path) -> None:
    """Delete a half-written shard unless a live build is writing it (deleted while locked, so that a build
    starting on it at this moment cannot write into the deleted file unnoticed)."""
    handle = _claim(path)
    if handle is not None:
        path.unlink(missing_ok=True)
        handle.close()


def _clean_stale(out: Path, plans: List[ShardPlan], mine: List[ShardPlan]) -> None:
    """Remove half-written shards of `mine` that no live build is writing (a whole build: of any shard) and
    shards that belong to no plan any more."""
    names, own = {p.name for p in plans}, {p.name for p in mine}
    for path in out.iterdir():
        if path.name.endswith(".tar.tmp"):
            stem = path.name.split(".", 1)[0]
            if stem in own or (len(own) == len(names) and stem not in names):  # a whole build owns every temp file
                _remove_unless_locked(path)
        elif path.name.endswith(".tmp") and (temp_writer_gone(path) or time.time() - path.stat().st_mtime > 60):
            path.unlink(missing_ok=True)  # a sidecar or manifest a killed build was writing (that takes ms)
        elif path.suffix in (".tar", ".json", ".idx") and _SHARD_NAME.match(path.stem) and path.stem not in names:
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
    if is_object_url(cfg.shards.out_dir):
        return _build_into_bucket(cfg, started, progress, stop_after, use_ray, count)
    out = Path(cfg.shards.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock(out, index, count):
        return _build(cfg, out, index, count, started, progress, stop_after, use_ray)


def _build_into_bucket(cfg: Config, started: float, progress: bool, stop_after: int, use_ray: bool,
                       count: int) -> BuildResult:
    """A build into object storage: built in a local mirror (resumed from what the bucket holds), each file sent
    whole, manifest.json last, so a reader of the bucket never sees an unfinished set."""
    from recon3d.data.tools.verify import summarise  # noqa: PLC0415 - tools import the writer's modules

    if count != 1:
        raise ValueError(f"shards.out_dir={cfg.shards.out_dir}: a build in parts needs a folder all parts share; "
                         "build into a bucket in one part (--ray spreads one build over a cluster)")
    with mirrored(cfg.shards.out_dir, cache_dir=cfg.loader.cache_dir) as out:
        with _build_lock(out, 0, 1):
            result = _build(cfg, out, 0, 1, started, progress, stop_after, use_ray)
        if result.manifest:
            result.summary = summarise(out).replace(str(out), cfg.shards.out_dir)
    return result


def _build_lock(out: Path, index: int, count: int):
    """One build per part of a folder at a time (parts of an array run side by side; their shards are apart and
    each shard in flight has a lock of its own): a second build of the same part stops, naming the holder."""
    path = out / f".build-{index}-of-{count}.lock"
    return exclusive_lock(path, f"{out}: another build of part {index}/{count} is running ({{holder}}; lock "
                                f"{path.name}); wait for it or stop it")


def _build(cfg: Config, out: Path, index: int, count: int, started: float, progress: bool, stop_after: int,
           use_ray: bool) -> BuildResult:
    items, rejects, kind = discover(cfg.source)
    layouts = {item.point_grid for item in items if item.point_grid}
    if layouts:  # IM-NET rows: the layout discovery found (one per source) is what the manifest records
        cfg = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, hdf5_point_grid=layouts.pop()))
    identical = identical_inputs(items, Path(cfg.source.root))
    plans = plan_shards(items, cfg, identical)
    mine = part_of(plans, index, count)
    _clean_stale(out, plans, mine)
    sides = {p.name: finished(out, p) for p in plans}
    pending = [p for p in mine if sides[p.name] is None]
    if stop_after:
        pending = pending[:stop_after]
    jobs = [(item, cfg.source.root, cfg) for p in pending for item in p.items]
    results = (ray_ordered_map if use_ray else ordered_map)(jobs, cfg.shards.workers)
    bar = _progress_bar(mine, pending) if progress else None
    stage_seconds = _write_shards(out, pending, results, sides, bar)
    sides = {name: side or finished(out, plan) for (name, side), plan in zip(sides.items(), plans)}  # other parts
    if any(side is None for side in sides.values()):  # stopped early, or other parts still at work: no manifest
        return BuildResult(out, {}, rejects, len(jobs), time.perf_counter() - started, stage_seconds)
    all_rejects = sorted(rejects + [r for p in plans for r in sides[p.name]["rejects"]],
                         key=lambda r: (r["path"], r["key"]))
    manifest = make_manifest(cfg, kind, plans, sides, all_rejects, identical)
    atomic_write(out / REJECTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in all_rejects).encode())
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    seconds = time.perf_counter() - started
    log = {"finished_unix": time.time(), "seconds": seconds, "workers": cfg.shards.workers, "prepared": len(jobs),
           "stage_seconds_total": {k: sum(v) for k, v in stage_seconds.items()}}
    atomic_write(out / BUILD_LOG, json.dumps(log, indent=1, sort_keys=True).encode())
    return BuildResult(out, manifest, all_rejects, len(jobs), seconds, stage_seconds)


def _progress_bar(mine: List[ShardPlan], pending: List[ShardPlan]):
    done = sum(len(p.items) for p in mine) - sum(len(p.items) for p in pending)
    return tqdm(total=sum(len(p.items) for p in mine), initial=done, unit="shape", desc="shards", file=sys.stderr,
                dynamic_ncols=True)


def _write_shards(out: Path, pending: List[ShardPlan], results, sides: Dict[str, Optional[dict]],
                  bar=None) -> Dict[str, List[float]]:
    """Write each pending shard from the results in plan order (a sidecar per finished shard, into `sides`);
    returns the seconds per preparation stage of the samples written."""
    stage_seconds: Dict[str, List[float]] = collections.defaultdict(list)
    run_rejects = 0
    for plan in pending:
        handle = _claim(out / f"{plan.name}.tar.tmp")
        if handle is None:  # another build is writing it: skip its samples, leave the shard to that build
            print(f"recon3d: {out / plan.name}.tar is being written by another build; skipped", file=sys.stderr)
            for _ in plan.items:
                next(results)
            continue
        tar = tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT)
        count, shard_rejects, facts = 0, [], {}
        for _ in plan.items:
            status, payload = next(results)
            if status == "ok":
                write_sample(tar, payload)
                count += 1
                facts[payload.key] = payload.facts
                for stage, sec in payload.seconds.items():
                    stage_seconds[stage].append(sec)
            else:
                shard_rejects.append(payload)
                run_rejects += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rejects=run_rejects, refresh=False)
        sides[plan.name] = _finish_shard(out, plan, tar, handle, count, shard_rejects, facts)
    if bar is not None:
        bar.close()
    return dict(stage_seconds)


def make_manifest(cfg: Config, kind: str, plans: List[ShardPlan], sides: Dict[str, dict],
                  rejects: List[dict], identical: Sequence[List[Item]] = ()) -> dict:
    shards = [{k: sides[p.name][k] for k in ("name", "split", "samples", "bytes", "sha256", "index_sha256")}
              for p in plans]
    splits = {s: {"samples": sum(x["samples"] for x in shards if x["split"] == s),
                  "shards": sum(1 for x in shards if x["split"] == s)} for s in schema.SPLITS}
    return {"format": schema.FORMAT, "source": {"root": str(cfg.source.root), "kind": kind},
            "config": prep_config(cfg), "samples": sum(x["samples"] for x in shards), "splits": splits,
            "shards": shards, "rejects": len(rejects),
            # groups of byte-identical input files (kept in one split): `shards summary` lists them
            **({"identical_inputs": sorted(sorted(i.key for i in group) for group in identical)} if identical else {})}


def upgrade_shards(shard_dir: str | Path) -> List[str]:
    """Give every shard of a folder its index (a shard set written before indexes existed, or one whose index was
    lost): each tar is checked against its manifest sha256 first (a damaged tar is named and left alone), then its
    index, sidecar and the manifest are written through temp names. Returns one line per shard."""
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    lines = []
    for shard in manifest["shards"]:
        tar = shard_dir / f"{shard['name']}.tar"
        try:
            current = load_index(tar)
        except (OSError, ValueError):
            current = None
        if current is not None and len(current["samples"]) == shard["samples"] and "index_sha256" in shard:
            lines.append(f"{tar.name}: indexed already")
            continue
        if not tar.is_file() or file_sha256(tar) != shard.get("sha256"):
            lines.append(f"{tar.name}: missing or its sha256 differs from the manifest; not indexed (rebuild it)")
            continue
        shard["index_sha256"] = write_index(tar)
        side_path = sidecar_path(shard_dir, shard["name"])
        try:
            side = json.loads(side_path.read_text())
            side["index_sha256"] = shard["index_sha256"]
            atomic_write(side_path, json.dumps(side, indent=1, sort_keys=True).encode())
        except (OSError, ValueError):
            pass  # no sidecar (an older set): the manifest carries the index checksum
        lines.append(f"{tar.name}: indexed ({shard['samples']} samples)")
    atomic_write(shard_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return lines
