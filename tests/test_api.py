"""recon3d.load and what a loaded model does, as docs/api.md shows it."""

import numpy as np
import pytest
import trimesh
from PIL import Image

import recon3d
from recon3d.data.loading.datamodule import iter_split
from tests.inference.test_reconstruct import _object_png


def test_an_image_encoder_reconstructs_encodes_and_decodes(trained_svr, tmp_path):
    model = recon3d.load(trained_svr.parent.parent, device="cpu")  # the run folder
    assert model.stage == "svr" and "svr" in repr(model)
    png = _object_png(tmp_path)
    mesh = model.reconstruct(png, resolution=16)
    z = model.encode(png)
    assert isinstance(mesh, trimesh.Trimesh) and z.shape == (16,) and z.dtype == np.float32
    pixels = np.asarray(Image.open(png))  # the same image as pixels or a PIL image gives the same code
    assert np.allclose(model.encode(pixels), z) and np.allclose(model.encode(Image.open(png)), z)
    again = model.decode(z, resolution=16)
    assert np.array_equal(again.faces, mesh.faces) and np.allclose(again.vertices, mesh.vertices)
    assert len(model.interpolate(png, z + 0.1, steps=3, resolution=8)) == 3
    with pytest.raises(ValueError, match="a svr model cannot generate; that needs a gan checkpoint"):
        model.generate(1)


def test_the_autoencoder_encodes_voxels(trained_autoencoder, tiny_shards):
    model = recon3d.load(trained_autoencoder, device="cpu")
    voxels = next(iter(iter_split(tiny_shards, "train", 2)))["voxels"][0, 0].numpy() > 0.5
    z = model.encode(voxels)
    assert z.shape == (16,) and isinstance(model.decode(z, resolution=16), trimesh.Trimesh)
    with pytest.raises(ValueError, match=r"voxels must be \(R, R, R\)"):
        model.encode(voxels[0])
    with pytest.raises(ValueError, match="cannot reconstruct an image"):
        model.reconstruct("x.png")


def test_a_gan_generates_and_interpolates_between_seeds(trained_gan):
    model = recon3d.load(trained_gan, device="cpu")
    first, second = model.generate(2, seed=3, resolution=16)
    again = model.generate(1, seed=3, resolution=16)[0]
    assert np.array_equal(first.faces, again.faces)  # a seed is a shape
    line = model.interpolate(3, 4, steps=3, resolution=16)
    assert np.array_equal(line[0].faces, first.faces) and np.array_equal(line[-1].faces, second.faces)


def test_vrn_reconstructs_in_the_camera_frame(trained_vrn, tmp_path):
    mesh = recon3d.load(trained_vrn, device="cpu").reconstruct(_object_png(tmp_path))
    assert isinstance(mesh, trimesh.Trimesh)


def test_a_path_that_is_not_a_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        recon3d.load(tmp_path / "missing.ckpt")


def test_the_docs_example_runs_as_written(trained_svr, trained_gan, tmp_path, monkeypatch):
    """docs/api.md's example, in a folder where runs/demo/svr and runs/demo/gan are the test's trained run folders."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "svr").symlink_to(trained_svr.parent.parent)
    (tmp_path / "runs" / "demo" / "gan").symlink_to(trained_gan.parent.parent)
    _object_png(tmp_path).rename(tmp_path / "chair.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/api.md", "exec"), {})
    assert (tmp_path / "chair.obj").is_file()


def test_an_export_loads_as_a_model_that_does_what_its_checkpoint_does(trained_svr, trained_gan, tmp_path):
    from recon3d.inference.export import export

    png = _object_png(tmp_path)
    export(trained_svr, tmp_path / "svr", onnx=False)
    exported, original = recon3d.load(tmp_path / "svr", device="cpu"), recon3d.load(trained_svr, device="cpu")
    assert exported.stage == "svr" and np.allclose(exported.encode(png), original.encode(png), atol=1e-6)
    mesh = exported.reconstruct(png, resolution=16)
    assert np.array_equal(mesh.faces, original.reconstruct(png, resolution=16).faces)
    export(trained_gan, tmp_path / "gan", onnx=False)
    same = [m.faces for m in recon3d.load(tmp_path / "gan", device="cpu").generate(2, seed=1, resolution=16)]
    assert all(np.array_equal(a, b.faces) for a, b in zip(same, recon3d.load(trained_gan, device="cpu").generate(
        2, seed=1, resolution=16)))
