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


def _png_claiming(path, width, height):
    """A PNG whose header claims width x height pixels (a decompression bomb's header; its data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_a_huge_image_is_skipped_from_its_header_and_the_others_go_on(trained_svr, tmp_path, capsys):
    bomb = _png_claiming(tmp_path / "bomb.png", 20000, 20000)  # 400 MP: PIL's own bomb error, before
    big = _png_claiming(tmp_path / "big.png", 12000, 12000)  # 144 MP: PIL only warns; 8.5 GB and 52 s before
    normal = _object_png(tmp_path)
    out = tmp_path / "out"
    assert main(["reconstruct", str(bomb), str(big), str(normal), "--ckpt", str(trained_svr), "-o", str(out),
                 "--resolution", "16"]) == 1
    err = capsys.readouterr().err
    assert "bomb.png: more than a photo needs (Image size (400000000 pixels) exceeds limit" in err
    assert "big.png: 12000x12000 px (144 MP)" in err
    assert (out / "obj.obj").is_file()


def test_an_empty_prediction_is_written_and_said(trained_svr, tmp_path, capsys, monkeypatch):
    from recon3d.inference import svr

    size, _ = svr.mesh_maker(trained_svr, 16, "cpu")
    monkeypatch.setattr(svr, "mesh_maker", lambda *args: (size, lambda view: (np.zeros((0, 3)), np.zeros((0, 3), int))))
    _object_png(tmp_path)
    assert main(["reconstruct", str(tmp_path / "obj.png"), "--ckpt", str(trained_svr), "-o", str(tmp_path / "out"),
                 "--resolution", "16"]) == 0
    assert f"{tmp_path / 'out' / 'obj.obj'} has no faces: the predicted shape is empty" in capsys.readouterr().err
