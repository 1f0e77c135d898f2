"""`recon3d shards verify`: every shard's checksum, size and sample count, and that every sample decodes."""

from __future__ import annotations

import collections
import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np

from recon3d.data import schema
from recon3d.data.loading.index import index_bytes, index_path, scan_tar
from recon3d.data.loading.shards import load_manifest, read_tar
from recon3d.data.tools.duplicates import THRESHOLD, NearDuplicates
from recon3d.files import file_sha256


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # findings that do not fail the check (twins within a split)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_sample(key: str, members: dict, expected: dict) -> List[str]:
    """Problems with one sample's members (decoding each one)."""
    problems = []
    missing = [m for m in expected["required"] if m not in members]
    if missing:
        return [f"{key}: missing members {missing}"]
    try:
        meta = schema.decode_meta(members)
        voxels = schema.unpack_voxels(members[schema.VOXELS])
        if voxels.shape[0] != meta["voxel_resolution"]:
            problems.append(f"{key}: voxels are {voxels.shape[0]}^3, meta says {meta['voxel_resolution']}")
        for res, info in meta["point_sets"].items():
            points = schema.load_npy(members[schema.points_member(int(res))])
            schema.unpack_values(members[schema.values_member(int(res))], len(points))
            if points.shape != (info["points"], 3):
                problems.append(f"{key}: points_{res} has shape {points.shape}, expected ({info['points']}, 3)")
        views = schema.view_count(members)
        if views != meta["views"]:
            problems.append(f"{key}: {views} views, meta says {meta['views']}")
        for i in range(views):
            schema.view_image(members, i)
        if meta.get("stereo_baseline"):
            rights = schema.view_count(members, right=True)
            if rights != meta["views"] or schema.CAMERA_RT_RIGHT not in members:
                problems.append(f"{key}: stereo baseline {meta['stereo_baseline']} but {rights} right views and "
                                f"{'a' if schema.CAMERA_RT_RIGHT in members else 'no'} {schema.CAMERA_RT_RIGHT}")
            else:
                for i in range(rights):
                    schema.view_image(members, i, right=True)
                if len(schema.load_npy(members[schema.CAMERA_RT_RIGHT])) != meta["views"]:
                    problems.append(f"{key}: {schema.CAMERA_RT_RIGHT} does not have one entry per view")
        if meta.get("surface_points"):
            points, _ = schema.unpack_surface(members)
            if points.shape != (meta["surface_points"], 3):
                problems.append(f"{key}: surface_points has shape {points.shape}")
        if meta.get("cameras"):
            for name in (schema.CAMERA_POSE, schema.CAMERA_K, schema.CAMERA_RT):
                if len(schema.load_npy(members[name])) != meta["views"]:
                    problems.append(f"{key}: {name} does not have one entry per view")
    except Exception as err:  # any decoding failure is a finding, not a crash
        problems.append(f"{key}: cannot decode ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
    return problems


def verify_shards(shard_dir: str | Path, *, decode: bool = True) -> VerifyReport:
    """Check a shard folder against its manifest; problems are collected, never raised."""
    shard_dir = Path(shard_dir)
    report = VerifyReport()
    try:
        manifest = load_manifest(shard_dir)
    except (FileNotFoundError, ValueError) as err:
        report.problems.append(str(err))
        return report
    geo = manifest["config"]["geometry"]
    required = [schema.META, schema.VOXELS]
    if manifest["source"]["kind"] != "imnet_hdf5":
        required += [schema.points_member(r) for r in geo["point_resolutions"]]
    expected = {"required": required}
    listed, owner, solids, near = set(), {}, {}, NearDuplicates()
    report.problems.extend(_split_problems(manifest))
    for shard in manifest["shards"]:
        path = shard_dir / f"{shard['name']}.tar"
        listed.add(path.name)
        report.shards += 1
        if not path.is_file():
            report.problems.append(f"{path.name}: missing")
            continue
        report.bytes += path.stat().st_size
        samples = _read_checked(path, shard, report.problems)
        if samples is None:
            continue
        if len(samples) != shard["samples"]:
            report.problems.append(f"{path.name}: {len(samples)} samples, manifest says {shard['samples']}")
        report.problems.extend(_index_problems(path, shard))
        report.samples += len(samples)
        report.problems.extend(_key_problems(path.name, samples, owner))
        _collect_solids(samples, shard["split"], solids, near if decode else None)
        if decode:
            for key, members in samples.items():
                report.problems.extend(f"{path.name}: {p}" for p in _check_sample(key, members, expected))
    report.problems.extend(_leak_problems(solids))
    report.notes.extend(_twin_notes(solids))
    if decode:
        report.notes.extend(_near_notes(near))
    for path in sorted(shard_dir.glob("*.tar")):
        if path.name not in listed:
            report.problems.append(f"{path.name}: not in the manifest (left over from another build?)")
    if report.samples != manifest["samples"] and not report.problems:
        report.problems.append(f"{report.samples} samples found, manifest says {manifest['samples']}")
    return report


def _read_checked(path: Path, shard: dict, problems: List[str]) -> dict | None:
    """A shard's samples once its size and sha256 match the manifest; None (with the problem noted) otherwise."""
    size = path.stat().st_size
    if size != shard["bytes"]:
        problems.append(f"{path.name}: {size} bytes, manifest says {shard['bytes']}")
        return None
    if file_sha256(path) != shard["sha256"]:
        problems.append(f"{path.name}: sha256 differs from the manifest")
        return None
    try:
        return read_tar(path)
    except (tarfile.TarError, OSError, EOFError) as err:
        problems.append(f"{path.name}: unreadable tar ({err})")
        return None


def _index_problems(path: Path, shard: dict) -> List[str]:
    """The index beside a tar: present when the manifest records one, its sha256 as recorded, and equal to the
    index made afresh from the tar's headers (a shard set from before indexes has none: `recon3d shards upgrade`)."""
    idx = index_path(path)
    if not idx.is_file():
        return [f"{idx.name}: missing (the manifest records one)"] if "index_sha256" in shard else []
    data = idx.read_bytes()
    if "index_sha256" in shard and hashlib.sha256(data).hexdigest() != shard["index_sha256"]:
        return [f"{idx.name}: sha256 differs from the manifest (damaged or rewritten)"]
    if data != index_bytes(scan_tar(path)):
        return [f"{idx.name}: disagrees with the offsets and sizes in {path.name}"]
    return []


def _key_problems(shard: str, samples: dict, owner: Dict[str, str]) -> List[str]:
    """Keys that are not relative shape ids, and keys already seen in another shard (`owner`: key -> shard)."""
    problems = []
    for key in samples:
        if key.startswith("/") or ".." in key.split("/") or not key.strip("/"):
            problems.append(f"{shard}: sample key {key!r} is not a relative shape id")
        if key in owner:
            leak = " (train/test leakage)" if owner[key].split("-")[0] != shard.split("-")[0] else ""
            problems.append(f"{shard}: sample {key!r} is also in {owner[key]}{leak}")
        owner.setdefault(key, shard)
    return problems


def _leak_problems(solids: Dict[str, List[tuple]]) -> List[str]:
    """Samples of different splits with byte-identical voxels: one shape trained on and evaluated under two names."""
    problems = []
    for found in solids.values():
        if len({split for _, split in found}) > 1:
            named = ", ".join(f"{key} ({split})" for key, split in sorted(found, key=lambda f: f[1] + f[0])[:6])
            problems.append(f"identical voxels in more than one split (train/test leakage): {named}"
                            + (f" and {len(found) - 6} more" if len(found) > 6 else ""))
    return problems


def _twin_notes(solids: Dict[str, List[tuple]]) -> List[str]:
    """Identical voxels under different keys of one split: not leakage, but one shape weighted twice."""
    notes = []
    for found in solids.values():
        if len(found) > 1 and len({split for _, split in found}) == 1:
            keys = sorted(key for key, _ in found)
            notes.append(f"identical voxels within {found[0][1]}: {', '.join(keys[:6])}"
                         + (f" and {len(keys) - 6} more" if len(keys) > 6 else ""))
    return notes


def _collect_solids(samples: dict, split: str, solids: Dict[str, List[tuple]], near: NearDuplicates | None) -> None:
    """Each sample's voxel digest into `solids` (digest -> [(key, split)]); the first of each digest into `near`."""
    for key, members in samples.items():
        if schema.VOXELS not in members:
            continue
        digest = schema.voxels_digest(members[schema.VOXELS])
        if near is not None and digest not in solids:
            try:
                near.add(key, split, schema.unpack_voxels(members[schema.VOXELS]))
            except ValueError:
                pass  # undecodable voxels are reported by the sample check
        solids.setdefault(digest, []).append((key, split))


def _near_notes(near: NearDuplicates) -> List[str]:
    """Near-identical shapes (a part moved, a few faces changed) across and within splits, most similar first."""
    pairs = near.pairs()
    notes = []
    for across, where in ((True, "across splits (near-leakage)"), (False, "within a split")):
        chosen = [p for p in pairs if p.across_splits == across]
        if chosen:
            notes.append(f"near-identical shapes {where}: {len(chosen)} pair(s) at voxel IoU >= {THRESHOLD} on a "
                         f"coarse grid; " + "; ".join(p.describe() for p in chosen[:5])
                         + (f"; and {len(chosen) - 5} more" if len(chosen) > 5 else ""))
    return notes


def _split_problems(manifest: dict) -> list:
    """Split labels that are not a split or disagree with the shard's name, and per-split totals that disagree with
    the shards listed."""
    problems = []
    for shard in manifest["shards"]:
        if shard["split"] not in schema.SPLITS or not shard["name"].startswith(f"{shard['split']}-"):
            problems.append(f"{shard['name']}: labelled split {shard['split']!r} in the manifest")
    for split in schema.SPLITS:
        listed = [s for s in manifest["shards"] if s["split"] == split]
        said = manifest.get("splits", {}).get(split, {})
        counted = {"samples": sum(s["samples"] for s in listed), "shards": len(listed)}
        for what, value in counted.items():
            if said.get(what) != value:
                problems.append(f"manifest splits.{split}.{what} says {said.get(what)}, its shards add up to {value}")
    return problems


def _fact_lines(manifest: dict, facts: dict) -> list:
    """The voxel rule, surface coverage (min, median, flagged samples) and the front axes per category."""
    geometry = manifest.get("config", {}).get("geometry", {})
    rule = geometry.get("voxel_rule", "fill")  # shard sets from before the rule was named used the fill rule
    lines = [f"  voxels: {geometry.get('voxel_resolution', '?')}^3, rule {rule}"]
    coverage = {k: f["surface_coverage"] for k, f in facts.items() if "surface_coverage" in f}
    if coverage:
        values = np.array(sorted(coverage.values()))
        low = sorted(k for k, f in facts.items() if f.get("low_coverage"))
        lines.append(f"  surface coverage (surface samples within a voxel of the solid): min {values[0]:.3f}, "
                     f"median {np.median(values):.3f}; below geometry.coverage_warn="
                     f"{geometry.get('coverage_warn', 0.95)}: {len(low)}")
        lines.extend(f"    {k}: {coverage[k]:.3f}" for k in low[:10])
    fronts: dict = {}
    for key, f in facts.items():
        if "front" in f:
            fronts.setdefault(f"{f['front']} ({f['front_from']})", set()).add(key.split("/")[0])
    lines.extend(f"  front {axis}: {', '.join(sorted(cats))}" for axis, cats in sorted(fronts.items()))
    return lines


def _geometry_twin_lines(facts: dict, splits: Dict[str, str]) -> List[str]:
    """Groups of samples with identical voxels (from the digests the build recorded), leaks first; near-identical
    shapes need the voxels themselves: `recon3d shards verify` measures them."""
    groups: Dict[str, List[str]] = {}
    for key, fact in facts.items():
        if "voxels_digest" in fact:
            groups.setdefault(fact["voxels_digest"], []).append(key)
    twins = sorted((sorted(keys) for keys in groups.values() if len(keys) > 1),
                   key=lambda keys: (len({splits[k] for k in keys}) == 1, keys))
    if not twins:
        return []
    leaks = sum(len({splits[k] for k in keys}) > 1 for keys in twins)
    lines = [f"  identical voxels under different keys: {len(twins)} group(s), {leaks} across splits (leakage: "
             "`recon3d shards verify` fails on them; it also lists near-identical shapes)"]
    lines.extend("    " + ", ".join(f"{k} ({splits[k]})" for k in keys[:6])
                 + (f" and {len(keys) - 6} more" if len(keys) > 6 else "") for keys in twins[:10])
    return lines


def summarise(shard_dir: str | Path) -> str:
    """A short human summary of a shard folder: splits, categories, rejects by reason, bytes per sample."""
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    categories: collections.Counter = collections.Counter()
    facts: dict = {}
    splits: Dict[str, str] = {}
    for shard in manifest["shards"]:
        side = shard_dir / f"{shard['name']}.json"
        if side.is_file():
            info = json.loads(side.read_text())
            rejected = {r["key"] for r in info["rejects"]}
            categories.update(k.split("/")[0] for k in info["keys"] if k not in rejected)
            facts.update(info.get("facts", {}))  # absent in shard sets built before it was recorded
            splits.update((k, shard["split"]) for k in info.get("facts", {}))
    total_bytes = sum(s["bytes"] for s in manifest["shards"])
    lines = [f"shards: {shard_dir} ({manifest['source']['kind']} source {manifest['source']['root']})"]
    for split in schema.SPLITS:
        info = manifest["splits"][split]
        lines.append(f"  {split:<5} {info['samples']:6d} samples in {info['shards']} shard(s)")
    if categories:
        lines.append("  categories: " + ", ".join(f"{c} {n}" for c, n in sorted(categories.items())))
    if manifest["samples"]:
        lines.append(f"  {total_bytes / manifest['samples'] / 1024:.0f} KiB per sample, "
                     f"{total_bytes / 2**20:.1f} MiB in all")
    lines.extend(_fact_lines(manifest, facts))
    identical = manifest.get("identical_inputs", [])
    if identical:
        lines.append(f"  identical input files: {len(identical)} group(s) of {sum(map(len, identical))} shapes, each "
                     "kept in one split")
        lines.extend(f"    {', '.join(group[:6])}" + (f" and {len(group) - 6} more" if len(group) > 6 else "")
                     for group in identical[:10])
    lines.extend(_geometry_twin_lines(facts, splits))
    rejects_path = shard_dir / "rejects.jsonl"
    rejects = [json.loads(line) for line in rejects_path.read_text().splitlines()] if rejects_path.is_file() else []
    lines.append(f"  rejected inputs: {len(rejects)}" + (f" (see {rejects_path})" if rejects else ""))
    for reject in rejects[:10]:
        lines.append(f"    {reject['path']}: {reject['reason']}")
    if len(rejects) > 10:
        lines.append(f"    ... {len(rejects) - 10} more")
    return "\n".join(lines)
