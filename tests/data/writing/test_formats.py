import numpy as np
import pytest
import trimesh

from recon3d.data.writing.formats import RejectError, read_binvox, read_off, voxel_boundary_mesh
from tests.conftest import shared_path


def test_binvox_reference_pair_and_commented_header():
    root = shared_path("reference", "binvox_pair")
    plain = read_binvox(root / "chair_model.binvox")
    commented = read_binvox(root / "chair_model.commented-header.binvox")
    assert plain.occupancy.shape == (32, 32, 32) and plain.occupancy.any()
    assert np.array_equal(plain.occupancy, commented.occupancy)
    np.testing.assert_allclose(plain.translate, [-0.265511, -0.331878, -0.263364])
    assert plain.voxel_size == pytest.approx(0.663756 / 32)  # scale / dim, not scale / (dim - 1)


def test_binvox_axis_order_round_trip(tmp_path):
    """binvox runs x slowest, then z, then y: a single voxel at (x, y, z) = (1, 2, 3) must come back there."""
    dim = 4
    grid = np.zeros((dim, dim, dim), bool)
    grid[1, 2, 3] = True
    flat = grid.transpose(0, 2, 1).ravel()  # to x, z, y order
    runs, i = bytearray(), 0
    while i < len(flat):
        j = i
        while j < len(flat) and flat[j] == flat[i] and j - i < 255:
            j += 1
        runs += bytes([int(flat[i]), j - i])
        i = j
    path = tmp_path / "one.binvox"
    path.write_bytes(b"#binvox 1\ndim 4 4 4\ntranslate 0 0 0\nscale 1\ndata\n" + bytes(runs))
    assert np.array_equal(read_binvox(path).occupancy, grid)


def test_a_binvox_bomb_is_rejected_before_its_voxels_are_decoded(tmp_path):
    """8 MB of runs claiming 1024^3 voxels (was accepted after minutes at 6 GB): the header's dim is checked first;
    the file size and the boundary mesh's face count are held to the mesh limits too."""
    import time

    from recon3d.data.writing.formats import RejectError, voxel_boundary_mesh

    dim = 1024
    runs = bytes([1, 255, 0, 255]) * (dim ** 3 // 510) + bytes([1, dim ** 3 % 510 or 1])
    path = tmp_path / "bomb.binvox"
    path.write_bytes(f"#binvox 1\ndim {dim} {dim} {dim}\ntranslate 0 0 0\nscale 1\ndata\n".encode() + runs)
    started = time.perf_counter()
    with pytest.raises(RejectError, match="binvox dim 1024 > limit 512"):
        read_binvox(path, max_dim=512)
    assert time.perf_counter() - started < 5
    with pytest.raises(RejectError, match="file too large"):
        read_binvox(path, max_bytes=2**20)
    checker = np.indices((8, 8, 8)).sum(0) % 2 == 0  # the most faces a grid can have
    with pytest.raises(RejectError, match=r"voxel surface of 3072 triangles > limit 1000 \(geometry.max_faces\)"):
        voxel_boundary_mesh(checker, (0, 0, 0), 1.0, max_faces=1000)


def test_voxel_boundary_mesh_is_closed_and_has_the_voxel_volume():
    grid = np.zeros((5, 5, 5), bool)
    grid[1:4, 1:3, 2] = True
    grid[2, 2, 3] = True
    mesh = voxel_boundary_mesh(grid, (0, 0, 0), 0.5)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight
    assert tm.volume == pytest.approx(grid.sum() * 0.125)


def test_off_with_comments_colours_and_ngons(tmp_path):
    path = tmp_path / "quad.off"
    path.write_text("COFF\n# comment\n4 1 0\n0 0 0 255 0 0\n1 0 0 0 255 0\n1 1 0 0 0 255\n0 1 0 9 9 9\n4 0 1 2 3\n")
    mesh = read_off(path)
    assert mesh.vertices.shape == (4, 3) and mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3]]


def test_off_without_header_is_refused(tmp_path):
    path = tmp_path / "x.off"
    path.write_text("3 1 0\n0 0 0\n")
    with pytest.raises(RejectError, match="missing OFF header"):
        read_off(path)


def test_vertex_counts_and_binary_junk_are_refused_before_parsing(tmp_path):
    """Parsers allocate per vertex, used or not: an obj of 2 faces and 40 vertices against a limit of 3 per allowed
    face, a ply header declaring too many, and a file of NULs named .obj are refused without being parsed."""
    import pytest

    from recon3d.data.writing.formats import RejectError, load_mesh

    lines = [f"v {i} {i % 3} {i % 5}" for i in range(40)] + ["f 1 2 3", "f 1 3 4"]
    (tmp_path / "padded.obj").write_text("\n".join(lines) + "\n")
    with pytest.raises(RejectError, match=r"too many vertices: more than 30 `v` lines"):
        load_mesh(tmp_path / "padded.obj", max_faces=10)
    assert len(load_mesh(tmp_path / "padded.obj", max_faces=20).faces) >= 1  # within 3 x 20: read as usual
    (tmp_path / "big.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 900\nproperty float x\n"
                                       b"property float y\nproperty float z\nend_header\n")
    with pytest.raises(RejectError, match="too many vertices: 900 declared > limit 30"):
        load_mesh(tmp_path / "big.ply", max_faces=10)
    with (tmp_path / "nuls.obj").open("wb") as handle:
        handle.truncate(200 * 2**20)  # sparse: 200 MiB of NULs
    with pytest.raises(RejectError, match=r"binary data \(NUL bytes\) in a text obj file"):
        load_mesh(tmp_path / "nuls.obj")  # refused from its first 64 KiB
