import numpy as np
import pytest

from recon3d.geometry import lfd
from recon3d.geometry.procedural import make_shape


def test_dodecahedron_symmetries_permute_the_ten_views():
    perms = lfd.symmetry_permutations()
    assert perms.shape == (60, 10)
    assert len({tuple(p) for p in perms}) == 60  # 60 distinct rotations act differently on the views
    assert all(sorted(p) == list(range(10)) for p in perms)
    dirs = lfd.view_directions()
    # dodecahedron vertices: each has 3 neighbours at cos = sqrt(5)/3 (41.8 deg); the rest of the pairs at cos 1/3
    assert np.allclose(np.sort(np.abs(dirs @ dirs.T), axis=1)[:, :-1], [1 / 3] * 6 + [5 ** 0.5 / 3] * 3)


def _disk_with_notch(size=64):
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - 30) ** 2 + (xx - 34) ** 2 < 20 ** 2
    mask[28:36, 34:60] = False  # a notch, so the shape is not symmetric
    mask[10:20, 10:25] = True
    return mask


def test_silhouette_features_ignore_in_plane_rotation_and_mirroring():
    mask = _disk_with_notch()
    base = np.concatenate([lfd.zernike_magnitudes(mask), lfd.fourier_magnitudes(mask)])
    for variant in (np.rot90(mask), np.rot90(mask, 2), mask[:, ::-1], mask.T):
        other = np.concatenate([lfd.zernike_magnitudes(variant), lfd.fourier_magnitudes(variant)])
        assert np.allclose(base, other, atol=1e-3)
    shifted = np.roll(mask, (5, -7), axis=(0, 1))  # translation does not matter either
    assert np.allclose(lfd.zernike_magnitudes(shifted), lfd.zernike_magnitudes(mask), atol=1e-9)


def test_a_rotated_copy_is_nearer_than_another_shape():
    from scipy.spatial.transform import Rotation

    chair, table = make_shape("chair", 0), make_shape("table", 1)
    rotation = Rotation.from_euler("xyz", [37, -61, 113], degrees=True).as_matrix()
    a = lfd.light_field_descriptor(chair.vertices, chair.faces, size=48)
    rotated = lfd.light_field_descriptor(chair.vertices @ rotation.T, chair.faces, size=48)
    other = lfd.light_field_descriptor(table.vertices, table.faces, size=48)
    assert lfd.lfd_distance(a, a) == 0
    assert lfd.lfd_distance(a, rotated) == pytest.approx(lfd.lfd_distance(rotated, a))
    assert lfd.lfd_distance(a, rotated) < 0.5 * lfd.lfd_distance(a, other)


def test_precision_at_1_by_hand():
    d = np.array([[0, 1, 5, 6], [1, 0, 2, 7], [5, 2, 0, 3], [6, 7, 3, 0.0]])
    out = lfd.precision_at_1(d, ["a", "a", "b", "c"])
    # a0 -> a1 (hit), a1 -> a0 (hit); b and c have a single member and cannot score
    assert out["a"] == {"shapes": 2, "precision@1": 1.0}
    assert "b" not in out and out["mean over shapes"]["shapes"] == 2
