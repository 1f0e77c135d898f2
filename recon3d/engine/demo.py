"""The main job, as far as it goes today: procedural shapes (or the user's meshes) -> verified shards + a summary.

A rerun resumes: existing meshes are kept, finished shards are not rebuilt.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from recon3d.config import Config
from recon3d.data.contact_sheet import contact_sheet
from recon3d.data.verify import summarise, verify_shards
from recon3d.data.writer import build_shards


def write_procedural_meshes(out: Path, categories, per_category: int) -> int:
    """Write `per_category` procedural meshes per category as OBJ under out/<category>/; returns files written."""
    from recon3d.geometry.procedural import make_shape

    written = 0
    for category in categories:
        folder = out / category
        folder.mkdir(parents=True, exist_ok=True)
        for seed in range(per_category):
            path = folder / f"{category}_{seed:03d}.obj"
            if path.exists():
                continue
            tmp = path.with_name(path.stem + ".tmp.part")
            make_shape(category, seed).export(tmp, file_type="obj")
            tmp.replace(path)
            written += 1
    return written


def run_demo(cfg: Config, meshes: str = "", progress: bool = True) -> int:
    """Build the demo run folder; returns a process exit code (0 when the shards verify clean)."""
    run_dir = Path(cfg.demo.out_dir)
    started = time.perf_counter()
    if meshes:
        source_root = Path(meshes)
        print(f"[1/4] using your meshes in {source_root}", file=sys.stderr)
    else:
        source_root = run_dir / "meshes"
        made = write_procedural_meshes(source_root, cfg.demo.categories, cfg.demo.shapes_per_category)
        print(f"[1/4] procedural shapes in {source_root} ({made} new, "
              f"{len(cfg.demo.categories)} categories x {cfg.demo.shapes_per_category})", file=sys.stderr)
    cfg = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, root=str(source_root)),
                              shards=dataclasses.replace(cfg.shards, out_dir=str(run_dir / "shards"),
                                                         samples_per_shard=cfg.demo.samples_per_shard))
    print(f"[2/4] building shards in {cfg.shards.out_dir} with {cfg.shards.workers} worker(s)", file=sys.stderr)
    result = build_shards(cfg, progress=progress)
    print("[3/4] verifying checksums, counts and every member", file=sys.stderr)
    report = verify_shards(cfg.shards.out_dir)
    sheet = contact_sheet(cfg.shards.out_dir, run_dir / "contact_sheet.png", count=min(10, result.manifest["samples"]))
    print(f"[4/4] contact sheet: {sheet}", file=sys.stderr)
    print(summarise(cfg.shards.out_dir))
    print(f"verify: {'clean' if report.ok else f'{len(report.problems)} problem(s)'}; "
          f"total {time.perf_counter() - started:.1f} s")
    for problem in report.problems[:20]:
        print(f"  {problem}")
    return 0 if report.ok else 1
