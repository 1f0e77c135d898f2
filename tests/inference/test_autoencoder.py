import json

import numpy as np
import pytest
import trimesh

from recon3d.cli.main import main
from recon3d.data.loading.latents import read_latents
from recon3d.inference.tables import summarise_rows


@pytest.fixture(scope="module")
def tiny_ckpt(trained_autoencoder):
    return trained_autoencoder


def test_export_latents_keyed_and_checksummed(tiny_ckpt, tiny_shards, capsys):
    assert main(["export-latents", "--ckpt", str(tiny_ckpt), "--shards", str(tiny_shards), "--name", "t"]) == 0
    out = tiny_shards / "latents" / "t"
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    total = 0
    for split in ("train", "val", "test"):
        keys, codes = read_latents(out, split)
        assert codes.shape == (len(keys), 16) and len(set(keys)) == len(keys)
        assert ((codes > 0) & (codes < 1)).all()
        total += len(keys)
    assert total == manifest["samples"]
    (out / "val.npy").write_bytes((out / "val.npy").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="sha256 differs"):
        read_latents(out, "val")


def test_extract_writes_meshes_with_counts(tiny_ckpt, tiny_shards, tmp_path, capsys):
    assert main(["extract", "--ckpt", str(tiny_ckpt), "--shards", str(tiny_shards), "-o", str(tmp_path),
                 "--split", "train", "--count", "2", "--resolution", "64", "--format", "ply",
                 "--sheet", str(tmp_path / "sheet.png")]) == 0
    out = capsys.readouterr().out
    files = sorted(tmp_path.glob("*.ply"))
    assert len(files) == 2 and out.count("points evaluated (dense 274625") == 2
    assert (tmp_path / "sheet.png").is_file()
    for path in files:
        mesh = trimesh.load(path, force="mesh")
        assert len(mesh.vertices) == 0 or np.abs(mesh.vertices).max() <= 0.5 + 1e-6


def test_eval_table_has_categories_and_means(tiny_ckpt, tiny_shards, tmp_path, capsys):
    assert main(["eval", "--ckpt", str(tiny_ckpt), "--shards", str(tiny_shards), "--split", "train",
                 "--resolution", "32", "--iou-resolution", "8", "-o", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "eval_autoencoder_train.json").read_text())
    assert "mean over categories" in summary and "mean over shapes" in summary
    for values in summary.values():
        assert 0 <= values["iou"] <= 1 and "chamfer_l2_x1000" in values and "fscore@1%" in values
    assert (tmp_path / "eval_autoencoder_train_shapes.csv").is_file()
    assert "IM-NET convention" in capsys.readouterr().out
    logged = list((tiny_ckpt.parent.parent / "logs").glob("version_*/metrics.csv"))
    assert any("eval/autoencoder_train/mean over shapes/iou" in p.read_text() for p in logged)


def test_eval_of_a_run_folder_logs_to_that_runs_loggers(tiny_ckpt, tiny_shards, tmp_path):
    run_dir = tiny_ckpt.parent.parent
    before = set((run_dir / "logs").glob("version_*"))
    assert main(["eval", "--ckpt", str(run_dir), "--shards", str(tiny_shards), "--split", "train",
                 "--resolution", "16", "--iou-resolution", "8", "-o", str(tmp_path)]) == 0
    added = [p / "metrics.csv" for p in set((run_dir / "logs").glob("version_*")) - before]
    assert len(added) == 1 and "eval/autoencoder_train/mean over shapes/iou" in added[0].read_text()


@pytest.mark.parametrize("stage", ["autoencoder", "svr"])
def test_evaluations_decode_their_iou_grids_in_the_inference_dtype(stage, trained_svr, tiny_ckpt, tiny_shards,
                                                                     monkeypatch):
    """bf16 where the hardware has it (RECON3D_INFERENCE_DTYPE forces either), as extraction; decode_occupancy then
    evaluates the cells near 0.5 again in fp32 (its own test is in tests/tasks/test_svr.py)."""
    import torch

    from recon3d.inference import autoencoder as ae_inference
    from recon3d.inference import svr as svr_inference
    from recon3d.tasks import autoencoder as ae_task
    from recon3d.tasks import decoding as shape_eval

    seen, decode, depth = [], shape_eval.decode_occupancy, []

    def spy(decoder, z, resolution, chunk=0, dtype=None, margin=0.01):
        if not depth:  # not bf16 decoding's own inner call
            seen.append(dtype)
        depth.append(1)
        try:
            return decode(decoder, z, resolution, chunk, dtype, margin)
        finally:
            depth.pop()

    monkeypatch.setattr(ae_task if stage == "autoencoder" else svr_inference, "decode_occupancy", spy)
    for forced, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        monkeypatch.setenv("RECON3D_INFERENCE_DTYPE", forced)
        seen.clear()
        if stage == "autoencoder":
            rows = ae_inference.evaluate(tiny_ckpt, tiny_shards, split="train", resolution=16, iou_resolution=8)
        else:
            rows = svr_inference.evaluate(trained_svr, tiny_shards, split="train", resolution=8)
        assert seen and set(seen) == {dtype} and 0 <= rows["mean over shapes"]["iou"] <= 1


def test_summary_means_per_category_and_over_shapes():
    rows = [{"key": "a/1", "category": "a", "iou": 1.0}, {"key": "a/2", "category": "a", "iou": 0.0},
            {"key": "b/1", "category": "b", "iou": 1.0}]
    summary = summarise_rows(rows)
    assert summary["a"]["iou"] == 0.5 and summary["mean over categories"]["iou"] == 0.75
    assert summary["mean over shapes"]["iou"] == pytest.approx(2 / 3)


def test_latents_stay_in_their_folder(tiny_ckpt, tiny_shards, tmp_path, capsys):
    import json as json_module

    from recon3d.data.loading.latents import read_latents

    for name in ("../../x", "a/b", ".."):
        assert main(["export-latents", "--ckpt", str(tiny_ckpt), "--shards", str(tiny_shards), "--name", name]) == 2
        assert "a folder name under" in capsys.readouterr().err
    assert not (tiny_shards.parent.parent / "x").exists()
    folder = tmp_path / "latents"  # an index that names a device and a file elsewhere: refused, not read
    folder.mkdir()
    for codes in ("/dev/zero", "../elsewhere.npy"):
        (folder / "latents.json").write_text(json_module.dumps({"splits": {"train": {
            "codes": codes, "codes_sha256": "0" * 64, "keys": "train.keys.json", "keys_sha256": "0" * 64}}}))
        with pytest.raises(ValueError, match="not a file of"):
            read_latents(folder, "train")


def test_many_codes_extracted_together_give_each_code_its_own_mesh(monkeypatch):
    """extract_many in groups of three and of two gives each code the mesh and point count of extracting it alone
    (its vertices to the rounding of larger GEMMs); a GPU's group follows its free memory, a CPU's is one."""
    from types import SimpleNamespace

    import torch

    from recon3d.geometry.extract import grid_bytes
    from recon3d.inference import autoencoder
    from recon3d.models.implicit_decoder import ImplicitDecoder

    torch.manual_seed(0)
    decoder = ImplicitDecoder(latent_dim=8, decoder_widths=[64, 64]).eval()
    with torch.no_grad():  # blobs that the codes move about: 0.5 + a random MLP's output
        decoder.last.bias.fill_(0.5)
    task = SimpleNamespace(model=SimpleNamespace(decoder=decoder))
    codes = torch.rand(3, 8) * 0.5
    alone = [autoencoder.extract_mesh(task, code, 64) for code in codes]
    assert len({len(faces) for _, faces, _ in alone}) == 3
    for group in (3, 2):
        for (verts, faces, evaluated), (one_verts, one_faces, one_evaluated) in \
                zip(autoencoder.extract_many(task, codes, 64, group=group), alone):
            assert evaluated == one_evaluated and len(faces) > 100
            assert np.array_equal(faces, one_faces)
            np.testing.assert_allclose(verts, one_verts, atol=1e-4)  # the GEMMs' rounding: 1/150 of a cell
    monkeypatch.setattr(autoencoder, "available_memory", lambda device: 2 * 4 * grid_bytes(64))
    assert autoencoder.extraction_group(64, "cuda") == 2 and autoencoder.extraction_group(64, "cpu") == 1
