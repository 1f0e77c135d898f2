import numpy as np
import pytest
from PIL import Image

from recon3d.inference.photo import FILL, prepare_photo


def _bbox(view):
    ys, xs = np.nonzero((view < 200).any(-1))
    return ys.min(), ys.max(), xs.min(), xs.max()


def _check_framed(view, size):
    assert view.shape == (size, size, 3) and view.dtype == np.uint8
    y0, y1, x0, x1 = _bbox(view)
    assert max(y1 - y0 + 1, x1 - x0 + 1) / size == pytest.approx(FILL, abs=0.05)
    assert (y0 + y1) / 2 == pytest.approx(size / 2, abs=2) and (x0 + x1) / 2 == pytest.approx(size / 2, abs=2)
    assert (view[0] == 255).all() and (view[:, -1] == 255).all()  # background composited on white


def test_alpha_channel_gives_the_mask(tmp_path):
    rgba = np.zeros((300, 200, 4), np.uint8)  # off-centre dark square on a transparent (black) background
    rgba[30:90, 20:60] = (40, 50, 60, 255)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    _check_framed(prepare_photo(tmp_path / "a.png", 137), 137)


def test_plain_background_estimated_from_the_border(tmp_path):
    rng = np.random.default_rng(0)
    rgb = np.clip(rng.normal((70, 110, 200), 3, (240, 320, 3)), 0, 255).astype(np.uint8)  # noisy blue backdrop
    rgb[120:220, 200:260] = (200, 40, 30)  # a red object near the corner
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=90)
    _check_framed(prepare_photo(tmp_path / "photo.jpg", 64), 64)


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_text("not an image"), "not a readable image"),
    (lambda p: Image.new("RGB", (100, 100), (9, 9, 9)).save(p, format="PNG"), "found no object"),
    (lambda p: Image.new("RGBA", (100, 100), (0, 0, 0, 0)).save(p, format="PNG"), "found no object"),
    (lambda p: Image.new("RGB", (5, 5)).save(p, format="PNG"), "too small"),
])
def test_unusable_images_name_file_and_reason(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ValueError, match=reason) as err:
        prepare_photo(path)
    assert str(path) in str(err.value)
