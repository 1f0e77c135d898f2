import numpy as np
import pytest

from recon3d.geometry.transform import axis_rotation, normalise, surface_centroid


@pytest.mark.parametrize("up, front", [("+y", "-z"), ("+z", "-y"), ("-x", "+z"), ("+z", "+x")])
def test_axis_rotation_maps_up_and_front(up, front):
    axes = {"+x": [1, 0, 0], "-x": [-1, 0, 0], "+y": [0, 1, 0], "-y": [0, -1, 0], "+z": [0, 0, 1], "-z": [0, 0, -1]}
    rot = axis_rotation(up, front)
    np.testing.assert_allclose(rot @ axes[up], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(rot @ axes[front], [0, 0, -1], atol=1e-12)
    assert np.isclose(np.linalg.det(rot), 1.0)  # a rotation, never a mirror


def test_same_axis_is_refused():
    with pytest.raises(ValueError, match="same axis"):
        axis_rotation("+y", "-y")


def test_normalise_fits_cube_and_centres():
    rng = np.random.default_rng(0)
    verts = rng.normal(size=(50, 3)) * [3, 1, 2] + [10, -4, 7]
    faces = rng.integers(0, 50, size=(80, 3))
    for center in ("mass", "bbox"):
        norm = normalise(verts, faces, center=center, half_extent=0.45)
        out = norm.apply(verts)
        assert np.abs(out).max() == pytest.approx(0.45)
        if center == "bbox":
            np.testing.assert_allclose(out.min(0) + out.max(0), 0, atol=1e-12)
        else:
            np.testing.assert_allclose(surface_centroid(out, faces), 0, atol=1e-9)


def test_zup_source_becomes_yup():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5.0]])  # tall along +z
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    out = normalise(verts, faces, up="+z", front="-y", center="bbox").apply(verts)
    extent = out.max(0) - out.min(0)
    assert np.argmax(extent) == 1  # the tall axis is now Y


def test_surface_centroid_is_area_weighted():
    # a big triangle at x=0 and a tiny one at x=10: the centroid stays near the big one
    verts = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 1], [10, 0, 0], [10, .01, 0], [10, 0, .01]], dtype=float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    assert surface_centroid(verts, faces)[0] < 0.01
