import numpy as np
from PIL import Image

from recon3d.cli.main import main
from tests.conftest import shared_path


def _object_png(folder):
    """obj.png in `folder`: a brown box on a transparent background."""
    rgba = np.zeros((90, 120, 4), np.uint8)
    rgba[20:70, 30:60] = (120, 90, 80, 255)
    Image.fromarray(rgba).save(folder / "obj.png")
    return folder / "obj.png"


def test_reconstruct_writes_a_mesh_per_image_and_skips_bad_ones(trained_svr, tmp_path, capsys):
    _object_png(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    code = main(["reconstruct", str(tmp_path / "obj.png"), str(tmp_path / "broken.png"), "--ckpt", str(trained_svr),
                 "-o", str(out), "--resolution", "16"])
    assert code == 1  # one of two skipped
    captured = capsys.readouterr()
    assert "broken.png: not a readable image" in captured.err
    assert (out / "obj.obj").is_file() and (out / "sheet.png").is_file()
    framed = np.asarray(Image.open(out / "obj.input.png"))
    assert framed.shape == (32, 32, 3)  # the tiny model's training frame (render.image_size=32)


def test_reconstruct_refuses_other_checkpoints(trained_autoencoder, tmp_path, capsys):
    assert main(["reconstruct", "x.png", "--ckpt", str(trained_autoencoder), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "makes no mesh from an image" in err and "svr or vrn" in err


def test_reconstruct_the_r2n2_demo_views(trained_svr, tmp_path, capsys):
    images = sorted(shared_path("reference", "r2n2_demo_imgs").glob("*.png"))
    assert main(["reconstruct", *map(str, images), "--ckpt", str(trained_svr), "-o", str(tmp_path),
                 "--resolution", "16"]) == 0
    assert len(list(tmp_path.glob("*.obj"))) == len(images) == 3
