"""Bad input: a clear one-line reason, and the rest of the work goes on. One case per kind of damage."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time

import numpy as np
import pytest
import trimesh

from recon3d.data.writing.executors import prepare_job
from recon3d.data.writing.formats import RejectError
from recon3d.data.writing.prepare import time_limit
from recon3d.data.writing.sources import Item
from recon3d.data.writing.writer import build_shards
from tests.conftest import tiny_config

BOX_OBJ = trimesh.exchange.obj.export_obj(trimesh.creation.box((1, 2, 1)), include_normals=False)


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _obj(vertices, faces):
    lines = [f"v {float(x)!r} {float(y)!r} {float(z)!r}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    return "\n".join(lines) + "\n"


def _cube(scale=1.0):
    box = trimesh.creation.box((1, 1, 1))
    return box.vertices * scale, box.faces


def make_empty(d):
    return _write(d / "a" / "empty.obj", b"")


def make_random_ply(d):
    return _write(d / "a" / "noise.ply", np.random.default_rng(0).bytes(4096))


def make_random_stl(d):
    return _write(d / "a" / "noise.stl", np.random.default_rng(1).bytes(300))


def make_random_glb(d):
    return _write(d / "a" / "noise.glb", b"glTF" + np.random.default_rng(2).bytes(500))


def make_nan(d):
    v, f = _cube()
    v[3] = [np.nan, 0, np.inf]
    return _write(d / "a" / "nan.obj", _obj(v, f))


def make_degenerate(d):
    mesh = _obj([[0, 0, 0], [1, 1, 1], [2, 2, 2], [0, 0, 0]], [[0, 1, 2], [0, 0, 3]])
    return _write(d / "a" / "degenerate.obj", mesh)


def make_single_triangle(d):
    return _write(d / "a" / "triangle.obj", _obj([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]]))


def make_point_cloud(d):
    cloud = trimesh.PointCloud(np.random.default_rng(0).random((100, 3)))
    return _write(d / "a" / "cloud.ply", cloud.export(file_type="ply"))


def make_vertices_only_obj(d):
    return _write(d / "a" / "points.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n")


def make_flat(d):
    plane = trimesh.creation.box((1, 1e-9, 1))
    return _write(d / "a" / "flat.obj", _obj(plane.vertices, plane.faces))


def make_huge(d):
    mesh = trimesh.creation.icosphere(subdivisions=5)  # 20480 faces > the limit set below
    return _write(d / "a" / "huge.obj", _obj(mesh.vertices, mesh.faces))


def make_huge_coordinates(d):
    v, f = _cube(1e15)
    return _write(d / "a" / "far.obj", _obj(v + 3e15, f))


def make_overflowing_coordinates(d):
    v, f = _cube(1e307)
    return _write(d / "a" / "overflow.obj", _obj(v * 1.7, f).replace("1.7", "17"))  # 1.7e308: inf once parsed


def make_obj_missing_mtl(d):
    return _write(d / "a" / "nomtl.obj", "mtllib missing.mtl\nusemtl wood\n" + BOX_OBJ)


def make_obj_missing_texture(d):
    _write(d / "a" / "tex.mtl", "newmtl wood\nmap_Kd textures/none.png\n")
    return _write(d / "a" / "tex.obj", "mtllib tex.mtl\nusemtl wood\n" + BOX_OBJ)


def make_gltf_scene(d):
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box((1, 1, 1)), node_name="left",
                       transform=trimesh.transformations.translation_matrix((-3, 0, 0)))
    scene.add_geometry(trimesh.creation.icosphere(radius=0.5), node_name="right",
                       transform=trimesh.transformations.translation_matrix((3, 0, 0)))
    return _write(d / "a" / "scene.glb", scene.export(file_type="glb"))


def make_gltf_missing_buffer(d):
    doc = {"asset": {"version": "2.0"}, "buffers": [{"uri": "gone.bin", "byteLength": 36}],
           "bufferViews": [{"buffer": 0, "byteLength": 36}],
           "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"}],
           "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}], "nodes": [{"mesh": 0}],
           "scenes": [{"nodes": [0]}], "scene": 0}
    return _write(d / "a" / "nobuffer.gltf", json.dumps(doc))


def make_many_bodies(d):
    rng = np.random.default_rng(0)
    boxes = [trimesh.creation.box((0.1, 0.1, 0.1)) for _ in range(300)]
    for box in boxes:
        box.apply_translation(rng.uniform(-2, 2, 3))
    return _write(d / "a" / "bodies.obj", trimesh.exchange.obj.export_obj(trimesh.util.concatenate(boxes)))


def make_off_ngons(d):
    angles = np.linspace(0, 2 * np.pi, 7)[:-1]
    ring = np.stack([np.cos(angles), np.sin(angles)], 1)
    verts = [[x, y, 0] for x, y in ring] + [[x, y, 1] for x, y in ring]
    faces = ["6 5 4 3 2 1 0", "6 6 7 8 9 10 11"] + [f"4 {i} {(i + 1) % 6} {(i + 1) % 6 + 6} {i + 6}" for i in range(6)]
    text = "OFF\n# a hexagonal prism\n12 8 0\n" + "\n".join(" ".join(map(str, v)) for v in verts) + "\n" + \
        "\n".join(faces) + "\n"
    return _write(d / "a" / "prism.off", text)


def make_off_glued_header(d):
    v, f = _cube()
    text = f"OFF{len(v)} {len(f)} 0\n" + "\n".join(" ".join(map(str, x)) for x in v) + "\n" + \
        "\n".join("3 " + " ".join(map(str, x)) for x in f) + "\n"
    return _write(d / "a" / "glued.off", text)


def make_truncated_off(d):
    return _write(d / "a" / "short.off", "OFF\n8 12 0\n0 0 0\n1 0 0\n")


def make_out_of_range_faces(d):
    return _write(d / "a" / "badidx.off", "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n")


def make_directory(d):
    (d / "a" / "folder.obj").mkdir(parents=True)
    return d / "a" / "folder.obj"


def make_broken_symlink(d):
    (d / "a").mkdir(parents=True, exist_ok=True)
    link = d / "a" / "dangling.obj"
    os.symlink(d / "nowhere.obj", link)
    return link


def make_unreadable(d):
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions cannot make a file unreadable")
    path = _write(d / "a" / "locked.obj", BOX_OBJ)
    path.chmod(0)
    return path


def make_non_ascii_name(d):
    return _write(d / "chaise longue" / "siège à bascule №1.obj", BOX_OBJ)


def make_truncated_binvox(d):
    return _write(d / "a" / "short.binvox", b"#binvox 1\ndim 32 32 32\ntranslate 0 0 0\nscale 1\ndata\n\x00\xff\x01")


def make_not_binvox(d):
    return _write(d / "a" / "fake.binvox", b"hello world\n")


CASES = [
    (make_empty, "empty file"),
    (make_random_ply, r"cannot parse ply|no geometry|no faces"),
    (make_random_stl, r"cannot parse stl|no geometry|no faces|only degenerate"),
    (make_random_glb, r"cannot parse glb"),
    (make_nan, r"non-finite vertex coordinates"),
    (make_degenerate, r"only degenerate faces"),
    (make_single_triangle, r"flat mesh"),
    (make_point_cloud, r"no faces"),
    (make_vertices_only_obj, r"no faces|no geometry"),
    (make_flat, r"flat mesh"),
    (make_huge, r"too many faces: 20480 > limit 10000"),
    (make_huge_coordinates, None),
    (make_overflowing_coordinates, r"non-finite|too large"),
    (make_obj_missing_mtl, None),
    (make_obj_missing_texture, None),
    (make_gltf_scene, None),
    (make_gltf_missing_buffer, r"cannot parse gltf|no geometry"),
    (make_many_bodies, None),
    (make_off_ngons, None),
    (make_off_glued_header, None),
    (make_truncated_off, r"malformed OFF"),
    (make_out_of_range_faces, r"face indices out of range"),
    (make_directory, r"not a regular file"),
    (make_broken_symlink, r"broken symlink"),
    (make_unreadable, r"permission denied"),
    (make_non_ascii_name, None),
    (make_truncated_binvox, r"truncated or corrupt binvox data: \d+ of 32768 voxels"),
    (make_not_binvox, r"not a binvox file"),
]


@pytest.mark.parametrize("maker, reason", CASES, ids=[c[0].__name__[5:] for c in CASES])
def test_each_bad_input_gets_a_reason_or_a_sample(tmp_path, maker, reason):
    path = maker(tmp_path)
    cfg = tiny_config("geometry.max_faces=10000")
    rel = path.relative_to(tmp_path).as_posix()
    kind = "binvox" if path.suffix == ".binvox" else "mesh"
    status, payload = prepare_job((Item("a/x", rel, kind), str(tmp_path), cfg))
    if reason is None:
        assert status == "ok", payload
    else:
        assert status == "reject", f"expected a reject for {rel}"
        assert re.search(reason, payload["reason"]), payload["reason"]
        assert payload["path"] == rel and "\n" not in payload["reason"]
        assert not payload["reason"].startswith("unexpected"), payload["reason"]


def test_gltf_scene_keeps_every_node_with_its_transform(tmp_path):
    from recon3d.data.writing.formats import load_mesh

    mesh = load_mesh(make_gltf_scene(tmp_path))
    assert mesh.vertices[:, 0].min() < -3.4 and mesh.vertices[:, 0].max() > 3.4


def test_timeout_rejects_and_moves_on(tmp_path):
    path = make_many_bodies(tmp_path)
    cfg = tiny_config("geometry.timeout_s=0.001")
    status, payload = prepare_job((Item("a/x", path.relative_to(tmp_path).as_posix(), "mesh"), str(tmp_path), cfg))
    assert status == "reject" and "timed out" in payload["reason"]


def test_a_parser_that_catches_the_timer_still_ends_as_the_time_out():
    """trimesh's loader caught the timer's exception and raised "string is not a file" (seen in a loaded suite)."""
    import time

    from recon3d.data.writing.formats import RejectError
    from recon3d.data.writing.prepare import time_limit

    with pytest.raises(RejectError, match=r"timed out after 0.01 s"):
        with time_limit(0.01):
            try:
                time.sleep(5)
            except RejectError:
                raise ValueError("string is not a file") from None


def test_a_build_over_all_bad_inputs_accounts_for_every_file(tmp_path):
    """Every input ends up in a shard or in rejects.jsonl, with duplicates named."""
    src = tmp_path / "src"
    for maker, _ in CASES:
        try:
            maker(src)
        except pytest.skip.Exception:
            pass
    _write(src / "a" / "prism.obj", BOX_OBJ)  # same shape id as prism.off: a duplicate
    out = tmp_path / "out"
    cfg = tiny_config(f"source.root={src}", f"shards.out_dir={out}", "geometry.max_faces=10000")
    result = build_shards(cfg, progress=False)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    rejected = {r["path"] for r in rejects}
    inputs = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.suffix in
              (".obj", ".off", ".ply", ".stl", ".glb", ".gltf", ".binvox")}  # files, links and a folder named x.obj
    inputs.discard("a/tex.mtl")
    accepted = result.manifest["samples"]
    assert accepted + len(rejected) == len(inputs)
    assert any("duplicate shape id" in r["reason"] for r in rejects)
    assert all(r["reason"] for r in rejects)


def test_a_folder_named_like_a_mesh_and_a_folder_link_get_a_reason(tmp_path):
    src = tmp_path / "src"
    (src / "chair" / "seat.obj").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    _write(tmp_path / "elsewhere" / "box.obj", BOX_OBJ)
    (src / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _write(src / "table" / "box.obj", BOX_OBJ)
    out = tmp_path / "out"
    result = build_shards(tiny_config(f"source.root={src}", f"shards.out_dir={out}"), progress=False)
    reasons = {json.loads(line)["path"]: json.loads(line)["reason"]
               for line in (out / "rejects.jsonl").read_text().splitlines()}
    assert result.manifest["samples"] == 1
    assert reasons == {"chair/seat.obj": "a folder named like a .obj file, not a file",
                       "linked": "a link to a folder: not followed (give its target as the root, or copy it)"}


def test_a_time_out_inside_a_logging_call_leaves_logging_usable_by_other_threads():
    """The timer fires while this thread holds logging's lock (as between a logging call's acquire and its try):
    afterwards another thread must still be able to take it (a W&B thread once waited on it forever)."""
    with pytest.raises(RejectError, match="timed out"):
        with time_limit(0.05):
            logging._lock.acquire()
            time.sleep(2)
    taken = []

    def take():
        taken.append(logging._lock.acquire(timeout=2))
        if taken[-1]:
            logging._lock.release()

    other = threading.Thread(target=take)
    other.start()
    other.join()
    assert taken == [True]
