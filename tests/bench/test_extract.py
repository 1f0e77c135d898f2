import numpy as np

from recon3d.bench.extract import bench_extract, imnet_reference_grid, measure_extraction


def test_the_extraction_benchmark_prints_every_method_beside_its_baseline(trained_autoencoder, tiny_shards):
    out = bench_extract(str(trained_autoencoder), str(tiny_shards), 2, 64, "cpu", full_size=True)
    for label in ("coarse-to-fine ", "coarse-to-fine, all at once", "marching cubes ", "marching cubes, skimage",
                  "mesh end to end, batched", "dense grid, fp32", "coarse-to-fine, full-size"):
        assert label in out, label
    assert "IM-NET" not in out  # its frame + queue is 256^3 only
    result = measure_extraction(str(trained_autoencoder), str(tiny_shards), 2, 64, "cpu", full_size=False)
    methods = result["methods"]
    assert methods["coarse_to_fine_batched"]["points"] == methods["coarse_to_fine"]["points"]
    assert result["iou_vs_dense_fp32_min"] >= 0.99


def test_imnets_reference_grid_evaluates_the_frame_then_only_mixed_cells():
    def sphere(points):
        return (points.norm(dim=-1) < 0.3).float()

    import torch

    values, points = imnet_reference_grid(lambda p: sphere(torch.as_tensor(p)), frame=16, cell=4)
    assert values.shape == (64, 64, 64) and 16 ** 3 < points < 16 ** 3 + 64 * 16 ** 3
    inside = values > 0.5
    centre = (np.argwhere(inside).mean(axis=0) + 0.5) / 64 - 0.5
    assert np.abs(centre).max() < 0.02 and abs(inside.mean() - 4 / 3 * np.pi * 0.3 ** 3) < 0.01
