import numpy as np
import pytest
import torch
from PIL import Image

from recon3d.cli.main import main
from recon3d.inference.latent import interpolate_codes, interpolation_weights


def test_interpolation_runs_from_z1_to_z2():
    z1, z2 = torch.zeros(4), torch.ones(4)
    line = interpolate_codes(z1, z2, 5)
    assert torch.equal(line[0], z1) and torch.equal(line[-1], z2)
    assert torch.allclose(line[2], torch.full((4,), 0.5))
    assert np.allclose(interpolation_weights(3), [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="steps"):
        interpolation_weights(1)


def test_generate_writes_meshes_and_a_sheet(trained_gan, tmp_path, capsys):
    assert main(["generate", "--ckpt", str(trained_gan), "-n", "3", "-o", str(tmp_path), "--resolution", "16"]) == 0
    meshes = sorted(tmp_path.glob("gan_*.obj"))
    assert [m.name for m in meshes] == ["gan_0.obj", "gan_1.obj", "gan_2.obj"]
    assert Image.open(tmp_path / "samples.png").size == (3 * 128, 128)
    # the same seed gives the same shape
    again = tmp_path / "again"
    assert main(["generate", "--ckpt", str(trained_gan), "-n", "1", "-o", str(again), "--resolution", "16"]) == 0
    assert (again / "gan_0.obj").read_bytes() == meshes[0].read_bytes()


def test_interpolate_between_keys_and_generated_samples(trained_autoencoder, trained_gan, tiny_shards, tmp_path,
                                                        capsys):
    from recon3d.data.loading.latents import read_latents

    keys, _ = read_latents(tiny_shards / "latents" / trained_autoencoder.parent.parent.name, "train")
    out = tmp_path / "keys"
    assert main(["interpolate", keys[0], keys[1], "--ckpt", str(trained_autoencoder), "--shards", str(tiny_shards),
                 "--steps", "4", "-o", str(out), "--resolution", "16"]) == 0
    assert len(list(out.glob("step_*.obj"))) == 4
    assert Image.open(out / "interpolation.png").size == (4 * 128, 128)
    mixed = tmp_path / "mixed"
    assert main(["interpolate", keys[0], "gan:3", "--ckpt", str(trained_gan), "--shards", str(tiny_shards),
                 "--steps", "3", "-o", str(mixed), "--resolution", "16"]) == 0
    assert len(list(mixed.glob("step_*.obj"))) == 3  # (empty meshes for the barely trained tiny model)


def test_latent_commands_explain_bad_input(trained_autoencoder, tiny_shards, tmp_path, capsys):
    assert main(["generate", "--ckpt", str(trained_autoencoder), "-o", str(tmp_path)]) == 2
    assert "latent GAN" in capsys.readouterr().err
    assert main(["interpolate", "nope/x", "gan:1", "--ckpt", str(trained_autoencoder), "--shards", str(tiny_shards),
                 "-o", str(tmp_path)]) == 2
    assert "no sample 'nope/x'" in capsys.readouterr().err


def test_search_by_key_and_by_mesh(trained_autoencoder, tiny_shards, tiny_meshes, tmp_path, capsys):
    import json

    from recon3d.data.loading.latents import read_latents

    keys, _ = read_latents(tiny_shards / "latents" / trained_autoencoder.parent.parent.name, "train")
    out = tmp_path / "found.json"
    assert main(["search", keys[0], "--ckpt", str(trained_autoencoder), "--shards", str(tiny_shards), "-k", "3",
                 "--json", str(out)]) == 0
    found = json.loads(out.read_text())["results"]
    assert len(found) == 3 and keys[0] not in [r["key"] for r in found]  # the query itself is left out
    assert [r["latent_distance"] for r in found] == sorted(r["latent_distance"] for r in found)
    # a mesh file voxelised like the shards: the same shape's own key comes first, at (nearly) zero distance
    category, name = keys[0].split("/")
    mesh = tiny_meshes / category / f"{name}.obj"
    assert main(["search", str(mesh), "--ckpt", str(trained_autoencoder), "--shards", str(tiny_shards), "-k", "1",
                 "--json", str(out)]) == 0
    nearest = json.loads(out.read_text())["results"][0]
    assert nearest["key"] == keys[0] and nearest["latent_distance"] < 1e-5
    assert main(["search", str(mesh), "--ckpt", str(trained_autoencoder), "--shards", str(tiny_shards), "-k", "2",
                 "--rerank-lfd", "2", "--json", str(out)]) == 0
    found = json.loads(out.read_text())["results"]
    assert len(found) == 2 and all("lfd" in r for r in found)
    assert main(["search", "photo.png", "--ckpt", str(trained_autoencoder), "--shards", str(tiny_shards)]) == 2
    assert "--svr" in capsys.readouterr().err


def test_search_with_an_unusable_mesh_is_one_line(trained_autoencoder, tiny_shards, tmp_path, capsys):
    (tmp_path / "empty.obj").write_text("")
    (tmp_path / "nan.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    for name, reason in (("empty.obj", "empty file"), ("nan.obj", "non-finite vertex coordinates")):
        assert main(["search", str(tmp_path / name), "--ckpt", str(trained_autoencoder), "--shards",
                     str(tiny_shards)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and name in err[0] and reason in err[0]
