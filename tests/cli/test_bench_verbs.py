"""`recon3d bench` prints figures for each benchmark."""

import shutil

from recon3d.cli.main import main
from tests.conftest import TINY


def test_bench_prints_figures(tiny_shards, tiny_meshes, capsys, tmp_path):
    assert main(["bench", "shards", str(tiny_shards)]) == 0
    assert "KiB per sample" in capsys.readouterr().out
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)  # the bench writes its h5py baseline into the folder it is given
    for stage, unit in (("autoencoder", "samples/s"), ("image", "views/s")):
        assert main(["bench", "loader", str(shards), "--stage", stage, "--workers", "0,1", "--batches", "2",
                     "--batch-size", "2", "--resolution", "16", "--repeats", "1"]) == 0
        out = capsys.readouterr().out
        for line in ("h5py baseline", "recon3d num_workers=0", "recon3d num_workers=1", " alone:", " training:"):
            assert line in out
        assert out.count(unit) == 6
    assert main(["bench", "prep", str(tiny_meshes), "-c", str(TINY), "--limit", "2", "--workers", "1"]) == 0
    assert "s/mesh" in capsys.readouterr().out
