"""`recon3d shards show`: a contact sheet of the shards, and a sample it cannot draw is skipped with its reason."""

import shutil

from PIL import Image

from recon3d.cli.main import main


def test_show_writes_a_contact_sheet(tiny_shards, tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["shards", "show", str(tiny_shards), "-o", str(out), "-n", "3"]) == 0
    with Image.open(out) as img:
        assert img.size[1] >= 3 * 32


def test_show_skips_a_sample_it_cannot_draw(tiny_shards, tmp_path, capsys):
    import io
    import json
    import tarfile

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("latents"))
    first = json.loads((shards / "manifest.json").read_text())["shards"][0]["name"]
    path = shards / f"{first}.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    broken = next(m.name for m, _ in members if m.name.endswith(".views.zlib"))
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            data = b"not views" if info.name == broken else data
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert main(["shards", "show", str(shards), "-o", str(tmp_path / "sheet.png")]) == 0
    assert "cannot be drawn" in capsys.readouterr().err and (tmp_path / "sheet.png").is_file()
