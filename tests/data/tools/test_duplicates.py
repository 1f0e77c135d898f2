"""Near-identical shapes: the MinHash candidates find every pair a brute-force comparison finds, and `shards verify`
and the build's summary name twins under different keys, a re-exported mesh and a slightly edited one."""

import shutil

import numpy as np
import trimesh

from recon3d.data.tools.duplicates import NearDuplicates, coarse_grid
from recon3d.data.tools.verify import summarise, verify_shards
from tests.conftest import tiny_config


def _blob(rng, size=32) -> np.ndarray:
    grid = np.zeros((size,) * 3, bool)
    for _ in range(rng.integers(2, 5)):
        lo = rng.integers(0, size - 8, 3)
        hi = lo + rng.integers(4, 12, 3)
        grid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return grid


def _edited(rng, grid, flips) -> np.ndarray:
    """`grid` with `flips` voxels of its boundary layer toggled (a part grown or shaved)."""
    edge = grid ^ np.roll(grid, 1, axis=0) | grid ^ np.roll(grid, 1, axis=1)
    cells = np.flatnonzero(edge)
    out = grid.copy().ravel()
    chosen = rng.choice(cells, size=min(flips, len(cells)), replace=False)
    out[chosen] = ~out[chosen]
    return out.reshape(grid.shape)


def test_the_candidates_miss_no_pair_that_brute_force_finds():
    rng = np.random.default_rng(3)
    grids = {}
    for base in range(12):
        grid = _blob(rng)
        grids[f"b{base}"] = grid
        for flips in (5, 20, 60, 150):  # IoU from about 0.99 down to below 0.9
            grids[f"b{base}-{flips}"] = _edited(rng, grid, flips)
    near = NearDuplicates()
    for i, (key, grid) in enumerate(grids.items()):
        near.add(key, "train" if i % 2 else "test", grid)
    found = {(p.first[0], p.second[0]): p.iou for p in near.pairs()}
    keys = list(grids)
    expected = {}
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            iou = (grids[a] & grids[b]).sum() / (grids[a] | grids[b]).sum()
            if iou >= 0.95:
                expected[(a, b)] = iou
    assert len(expected) >= 12 and any(iou < 0.97 for iou in expected.values())  # the test has near pairs to find
    assert found.keys() == expected.keys()
    assert all(abs(found[k] - expected[k]) < 1e-9 for k in expected)
    assert {p.across_splits for p in near.pairs()} == {True, False}


def test_grids_are_pooled_to_the_coarse_grid_by_any():
    fine = np.zeros((64, 64, 64), bool)
    fine[1, 2, 3] = True
    coarse = coarse_grid(fine)
    assert coarse.shape == (32, 32, 32) and coarse[0, 1, 1] and coarse.sum() == 1
    assert coarse_grid(np.ones((16, 16, 16), bool)).shape == (16, 16, 16)


def test_verify_and_the_summary_name_identical_and_near_identical_shapes(tiny_meshes, tmp_path):
    root = tmp_path / "meshes"
    shutil.copytree(tiny_meshes, root)
    shutil.copy(root / "chair" / "chair_001.obj", root / "chair" / "chair_copy.obj")  # kept in one split
    chair = trimesh.load(root / "chair" / "chair_002.obj", force="mesh")
    trimesh.Trimesh(chair.vertices, chair.faces).export(root / "car" / "resaved.obj")  # other bytes, same shape
    moved = chair.vertices.copy()
    top = moved[:, 1] > np.percentile(moved[:, 1], 80)
    moved[top, 1] += 0.002 * np.ptp(moved[:, 1])  # the back a little taller
    trimesh.Trimesh(moved, chair.faces).export(root / "table" / "edited.obj")
    out = tmp_path / "shards"
    from recon3d.data.writing.writer import build_shards

    build_shards(tiny_config(f"source.root={root}", f"shards.out_dir={out}", "shards.samples_per_shard=2",
                             "geometry.voxel_resolution=32"), progress=False)
    report = verify_shards(out)
    findings = "\n".join(report.problems + report.notes)
    assert [n for n in report.notes if n.startswith("identical voxels within ")
            and "chair/chair_001, chair/chair_copy" in n], findings
    assert "car/resaved" in findings and "chair/chair_002" in findings, findings
    near = [n for n in report.notes if n.startswith("near-identical shapes")]
    assert len(near) == 1 and "table/edited" in near[0], findings
    assert "chair/chair_002" in near[0] or "car/resaved" in near[0], findings  # one of the twins stands for both
    summary = summarise(out)
    assert "identical voxels under different keys: 2 group(s)" in summary, summary
    assert "car/resaved" in summary and "chair/chair_copy" in summary
    assert verify_shards(out, decode=False).notes == [n for n in report.notes if not n.startswith("near")]
