"""`recon3d export`: weights and a card that load with no Lightning and no pickle, and ONNX networks that
onnxruntime runs as torch does."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from recon3d.cli.main import main
from recon3d.inference.export import ONNX_TOLERANCE, export
from recon3d.models.exported import load_export
from recon3d.tasks.checkpoints import load_with_autoencoder

NO_LIGHTNING = ("import sys; sys.modules.update({m: None for m in ('lightning', 'lightning.pytorch', "
                "'pytorch_lightning', 'omegaconf')}); import pickle; pickle.loads = pickle.load = None; ")


@pytest.fixture(scope="module")
def svr_export(trained_svr, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "svr"
    assert main(["export", "--ckpt", str(trained_svr.parent.parent), "-o", str(out)]) == 0
    return out


def test_an_svr_export_holds_its_networks_a_card_and_checked_onnx(svr_export, trained_svr):
    card = json.loads((svr_export / "card.json").read_text())
    assert card["stage"] == "svr" and set(card["parts"]) == {"image_encoder", "autoencoder"}
    assert card["recon3d_version"] and len(card["shards_manifest_sha256"]) == 64
    assert card["checkpoint"]["sha256"] and "best val/iou" in card["metrics"] or "global_step" in card["metrics"]
    assert set(card["onnx"]) == {"image_encoder.onnx", "decoder.onnx"}
    for name, entry in card["onnx"].items():
        assert (svr_export / name).is_file() and entry["max_abs_diff"] <= ONNX_TOLERANCE
    assert sorted(p.name for p in svr_export.iterdir()) == ["card.json", "decoder.onnx", "image_encoder.onnx",
                                                            "weights.safetensors"]


def test_the_export_loads_without_lightning_or_pickle_and_computes_what_the_checkpoint_does(svr_export, trained_svr,
                                                                                           tmp_path):
    svr, autoencoder = load_with_autoencoder(trained_svr, expect="svr")
    image = torch.rand(2, svr.hparams.image_channels, svr.hparams.crop_size, svr.hparams.crop_size)
    points = torch.rand(2, 300, 3) - 0.5
    with torch.no_grad():
        z = svr.encoder(image)
        expected = autoencoder.model.decoder(points, z)
    np.save(tmp_path / "image.npy", image.numpy())
    np.save(tmp_path / "points.npy", points.numpy())
    code = NO_LIGHTNING + (
        "import numpy as np, torch; from recon3d.models.exported import load_export; "
        f"card, parts = load_export({str(svr_export)!r}); "
        f"image = torch.from_numpy(np.load({str(tmp_path / 'image.npy')!r})); "
        f"points = torch.from_numpy(np.load({str(tmp_path / 'points.npy')!r})); "
        "z = parts['image_encoder'](image); out = parts['autoencoder'].decoder(points, z); "
        f"np.save({str(tmp_path / 'out.npy')!r}, out.detach().numpy()); "
        "print(card['stage'], 'lightning' in sys.modules and sys.modules['lightning'] is not None)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["svr", "False"]
    assert np.allclose(np.load(tmp_path / "out.npy"), expected.numpy(), atol=1e-6)


def test_autoencoder_and_gan_exports_serve_their_networks(trained_autoencoder, trained_gan, tmp_path):
    card = export(trained_autoencoder, tmp_path / "ae")
    assert set(card["onnx"]) == {"voxel_encoder.onnx", "decoder.onnx"}
    card = export(trained_gan, tmp_path / "gan")
    assert set(card["onnx"]) == {"generator.onnx", "decoder.onnx"} and set(card["parts"]) == {"generator",
                                                                                               "autoencoder"}
    _, parts = load_export(tmp_path / "gan")
    assert parts["generator"](torch.randn(3, card["parts"]["generator"]["hyper_parameters"]["noise_dim"])).shape[0] == 3


def test_vrn_and_stereo_export_weights_and_card(trained_vrn, trained_stereo, tmp_path):
    for name, ckpt, part in (("vrn", trained_vrn, "volume_regressor"), ("stereo", trained_stereo, "view_synthesizer")):
        card = export(ckpt, tmp_path / name, onnx=False)
        assert card["stage"] == name and card["onnx"] == {}
        _, parts = load_export(tmp_path / name)
        assert list(parts) == [part]


def test_an_export_replaces_an_export_and_nothing_else(trained_vrn, tmp_path):
    out = tmp_path / "out"
    export(trained_vrn, out, onnx=False)
    export(trained_vrn, out, onnx=False)  # over the previous export: replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left beside it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="mine: exists and is not an export"):
        export(trained_vrn, tmp_path / "mine", onnx=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
