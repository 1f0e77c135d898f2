import numpy as np
import pytest
import torch

from recon3d.errors import ConfigError
from recon3d.geometry.metrics import coverage_and_mmd, nearest_references, pairwise_chamfer_l2
from recon3d.models.latent_gan import LatentCritic, gradient_penalty
from recon3d.tasks.gan import LatentGANTask
from recon3d.training.run import run
from tests.conftest import GAN_TINY, tiny_config


def _gan_cfg(shards, ckpt, run_dir, *extra):
    return tiny_config(f"loader.shards={shards}", f"train.run_dir={run_dir}", "train.stage=gan",
                       f"gan.autoencoder_ckpt={ckpt}", *GAN_TINY, *extra)



def _gan_task(cfg, shards):
    from recon3d.data.loading.shards import load_manifest

    return LatentGANTask.from_config(cfg, load_manifest(shards))

def test_gan_trains_both_networks_and_measures_cov_mmd(tiny_shards, trained_autoencoder, tmp_path):
    cfg = _gan_cfg(tiny_shards, trained_autoencoder, tmp_path)
    before = {k: v.clone() for k, v in _gan_task(cfg, tiny_shards).state_dict().items()}  # same seed as run() uses
    result = run(cfg, enable_wandb=False, enable_progress_bar=False)
    for key in ("train/critic_loss", "train/generator_loss", "train/gp", "val/wasserstein", "val/cov"):
        assert key in result.metrics and np.isfinite(result.metrics[key]), key
    # the tiny autoencoder decodes little yet: empty samples are counted, and MMD is NaN only when all are empty
    assert 0 <= result.metrics["val/empty_samples"] <= 1 and "val/mmd" in result.metrics
    # it keeps its best checkpoint by val/mmd but hands on its last (the weight average's latest state)
    assert result.best_checkpoint.name.startswith("best-") and result.handed_on == result.last_checkpoint
    task = LatentGANTask.load_from_checkpoint(result.last_checkpoint, map_location="cpu", weights_only=True)
    after = task.state_dict()
    for prefix in ("generator.", "critic."):  # both optimisers stepped
        changed = [k for k in after if k.startswith(prefix) and not torch.equal(after[k], before[k])]
        assert changed, prefix
    assert sorted((tmp_path / "samples").glob("epoch_*.png"))
    codes = task.generator.sample(3)
    assert codes.shape == (3, 16) and ((codes >= 0) & (codes <= 1)).all()
    # shapes come from the weight average: one update per generator step (2 epochs x 4 batches / n_critic 2), and
    # it lies between the first weights and the last
    assert int(after["ema_updates"]) == 4
    for name, average in task.generator_ema.state_dict().items():
        first, last = before[f"generator.{name}"], after[f"generator.{name}"]
        if not torch.equal(first, last):
            assert not torch.equal(average, first) and not torch.equal(average, last), name
    assert torch.equal(task.codes_for_seeds([3]), task.generator_ema(torch.randn(
        1, 8, generator=torch.Generator().manual_seed(3))))


def test_weight_average_update_by_hand(tiny_shards, trained_autoencoder, tmp_path):
    """ema += (1 - decay)(generator - ema), the decay ramped as min(ema_decay, (1 + n) / (10 + n)); 0 keeps none."""
    task = _gan_task(_gan_cfg(tiny_shards, trained_autoencoder, tmp_path, "gan.ema_decay=0.5"), tiny_shards)
    with torch.no_grad():
        for average, current in zip(task.generator_ema.parameters(), task.generator.parameters()):
            average.fill_(1.0)
            current.fill_(3.0)
    task.update_ema()  # n = 1: ramp 2/11 < 0.5
    assert all(torch.allclose(p, torch.full_like(p, 1 + 2 * 9 / 11)) for p in task.generator_ema.parameters())
    task.ema_updates.fill_(99)
    task.update_ema()  # n = 100: ramp 101/110 > 0.5, so 0.5
    start = 1 + 2 * 9 / 11
    expected = start + 0.5 * (3 - start)
    assert all(torch.allclose(p, torch.full_like(p, expected)) for p in task.generator_ema.parameters())
    assert task.sampler is task.generator_ema and not any(p.requires_grad for p in task.generator_ema.parameters())
    plain = _gan_task(_gan_cfg(tiny_shards, trained_autoencoder, tmp_path, "gan.ema_decay=0"), tiny_shards)
    assert plain.generator_ema is None and plain.sampler is plain.generator
    assert not any(k.startswith("generator_ema") or k == "ema_updates" for k in plain.state_dict())


def test_a_checkpoint_without_weight_average_resumes_with_one(tiny_shards, trained_autoencoder, tmp_path):
    """A run saved with gan.ema_decay=0 (or before the average existed) goes on with one that starts from its
    generator, and an old checkpoint still loads as it was (no average in its hyperparameters)."""
    old = run(_gan_cfg(tiny_shards, trained_autoencoder, tmp_path, "gan.ema_decay=0"), enable_wandb=False,
              enable_progress_bar=False).last_checkpoint
    task = LatentGANTask.load_from_checkpoint(old, map_location="cpu", weights_only=True)
    assert task.generator_ema is None
    resumed = run(_gan_cfg(tiny_shards, trained_autoencoder, tmp_path, "gan.epochs=3"), enable_wandb=False,
                  enable_progress_bar=False)
    task = LatentGANTask.load_from_checkpoint(resumed.last_checkpoint, map_location="cpu", weights_only=True)
    assert resumed.epoch == 3 and int(task.ema_updates) == 2  # one epoch more: 4 batches / n_critic 2


def test_gan_config_rules_name_the_fix(tiny_shards, trained_autoencoder, tmp_path):
    with pytest.raises(ConfigError, match="DeepSpeed strategy takes one"):
        _gan_cfg(tiny_shards, trained_autoencoder, tmp_path, "train.strategy=deepspeed_stage_2",
                 "train.accelerator=gpu")
    with pytest.raises(ConfigError, match="model.latent_dim=16"):
        run(_gan_cfg(tiny_shards, trained_autoencoder, tmp_path, "model.latent_dim=32"), enable_wandb=False)
    with pytest.raises(ConfigError, match="gan.autoencoder_ckpt"):
        run(_gan_cfg(tiny_shards, "", tmp_path), enable_wandb=False)


def test_gradient_penalty_of_a_linear_critic():
    """A linear critic has gradient w everywhere: the penalty is (|w| - 1)^2."""
    critic = LatentCritic(latent_dim=4, widths=[1])
    with torch.no_grad():
        critic.net[0].weight.copy_(torch.tensor([[3.0, 0.0, 4.0, 0.0]]))
        critic.net[2].weight.fill_(1.0)
        critic.net[0].bias.fill_(10.0)  # keeps the leaky ReLU on its identity side
    penalty = gradient_penalty(critic, torch.rand(5, 4), torch.rand(5, 4))
    assert penalty.item() == pytest.approx(16.0)


def test_pairwise_chamfer_against_a_naive_loop():
    rng = np.random.default_rng(0)
    a = [rng.random((7, 3)) for _ in range(3)]
    b = [rng.random((5, 3)) for _ in range(2)]
    got = pairwise_chamfer_l2(a, b)
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            d = ((p[:, None] - q[None]) ** 2).sum(-1)
            assert got[i, j] == pytest.approx(0.5 * (d.min(1).mean() + d.min(0).mean()), rel=1e-5)


def test_coverage_and_mmd_by_hand():
    # generated x reference: samples 0 and 1 both match reference 0, nobody matches reference 2
    d = np.array([[1.0, 5.0, 9.0], [2.0, 6.0, 8.0], [7.0, 3.0, 9.5]])
    scores = coverage_and_mmd(d)
    assert scores["cov"] == pytest.approx(2 / 3)
    assert scores["mmd"] == pytest.approx((1.0 + 3.0 + 8.0) / 3)
    # an empty sample (a row of inf) matches no reference: argmin alone would hand it reference 0
    empty = np.vstack([d[2:], np.full((1, 3), np.inf)])
    assert nearest_references(empty) == {1} and coverage_and_mmd(empty)["cov"] == pytest.approx(1 / 3)
    assert nearest_references(d, rows=[0, 1]) == {0}


def _spheres(rng):
    """ball(r): 64 random points on a sphere of radius r, drawn from `rng`."""
    def ball(r):
        v = rng.normal(size=(64, 3))
        return r * v / np.linalg.norm(v, axis=1, keepdims=True)

    return ball


def test_gan_test_scores_by_hand():
    """COV with every sample, COV@1x over disjoint draws of as many samples as references, empty samples match none."""
    from recon3d.inference.latent import _set_scores

    ball = _spheres(np.random.default_rng(0))

    references = [ball(0.25), ball(0.4)]
    # draw 1: a 0.25 ball and an empty sample -> covers reference 0; draw 2: both balls -> covers both
    clouds = [ball(0.25), None, ball(0.25), ball(0.4)]
    summary, distances, matched = _set_scores(clouds, references, np.array(["a", "b"]), per_shape=2)
    assert np.isinf(distances[1]).all() and np.isfinite(distances[[0, 2, 3]]).all() and matched == {0, 1}
    whole = summary["mean over shapes"]
    assert whole["cov"] == 1.0 and whole["cov@1x"] == pytest.approx(0.75)
    assert summary["a"]["cov@1x"] == 1.0 and summary["b"]["cov@1x"] == pytest.approx(0.5)
    # each reference has a sample of its own radius: closer than the two radii are to each other
    assert whole["mmd"] == pytest.approx(distances.min(axis=0).mean()) and whole["mmd"] < 1000 * 0.15 ** 2 / 2


def test_scores_over_disjoint_draws_by_hand():
    """Each draw scored on its own, then averaged: COV's mean, lowest and highest; per reference shape the share of
    draws that matched it and its mean distance to the nearest sample."""
    from recon3d.inference.latent import _drawn_scores, _set_scores

    ball = _spheres(np.random.default_rng(0))

    references = [ball(0.25), ball(0.4)]
    categories = np.array(["a", "b"])
    first, second = [ball(0.25), None], [ball(0.25), ball(0.4)]  # draw 1 covers reference 0, draw 2 both
    summary, nearest, matched = _drawn_scores(first + second, references, categories, 1, draws=2)
    whole = summary["mean over shapes"]
    assert whole["cov"] == pytest.approx(0.75) and (whole["cov min"], whole["cov max"]) == (0.5, 1.0)
    assert summary["b"]["cov"] == pytest.approx(0.5) and summary["a"]["cov min"] == 1.0
    assert matched.tolist() == [1.0, 0.5]
    alone = [_set_scores(part, references, categories, 1) for part in (first, second)]
    assert nearest == pytest.approx(np.mean([d.min(axis=0) for _, d, _ in alone], axis=0))
    assert whole["mmd"] == pytest.approx(np.mean([s["mean over shapes"]["mmd"] for s, _, _ in alone]))
    one, _, _ = _drawn_scores(second, references, categories, 1, draws=1)  # one draw: min = max = cov
    assert one["mean over shapes"]["cov min"] == one["mean over shapes"]["cov max"] == 1.0


def test_gan_evaluation_table_with_its_training_set_ceiling(tiny_shards, trained_gan, tmp_path):
    from recon3d.inference.latent import TABLE_COLUMNS, evaluate
    from recon3d.inference.tables import format_table

    summary = evaluate(trained_gan, tiny_shards, split="val", per_shape=2, draws=2, out_dir=tmp_path)
    references = summary["mean over shapes"]["shapes"]
    assert summary["mean over shapes"]["empty"] <= 2 * 2 * references  # over both draws
    whole = summary["mean over shapes"]
    assert whole["cov min"] <= whole["cov"] <= whole["cov max"]
    ceiling = summary["train shapes (ceiling)"]
    assert 1 <= ceiling["shapes"] <= 2 * references and 0 <= ceiling["cov"] <= 1
    assert (tmp_path / "eval_gan_val.csv").read_text().count("\n") == len(summary) + 1
    assert "train shapes (ceiling)" in format_table(summary, TABLE_COLUMNS)


class _BallDecoder(torch.nn.Module):
    """A field whose shape is a ball of radius 0.1 + 0.3 z[0] (a known answer for the set metrics)."""

    def forward(self, points, z):
        radius = 0.1 + 0.3 * z[:, :1, None]
        return (points.norm(dim=-1, keepdim=True) < radius).float()


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
def test_set_metrics_against_known_shapes(forced, tiny_shards, trained_autoencoder, tmp_path, monkeypatch):
    """In either decoding dtype (the inference dtype, as the test evaluation: this hook runs outside autocast)."""
    import recon3d.tasks.gan as gan_module

    monkeypatch.setenv("RECON3D_INFERENCE_DTYPE", forced)
    dtypes, decode = [], gan_module.decoded_surfaces
    monkeypatch.setattr(gan_module, "decoded_surfaces", lambda *a: dtypes.append(a[-1]) or decode(*a))
    task = _gan_task(_gan_cfg(tiny_shards, trained_autoencoder, tmp_path, "gan.reference_split=train",
                              "train.val_resolution=16"), tiny_shards)
    task._frozen.append(_BallDecoder())
    ball = _spheres(np.random.default_rng(0))

    task._references = np.stack([ball(0.25), ball(0.4)])
    with torch.no_grad():  # the generator that makes shapes emits z[0] = 0.5 (radius 0.25) for any noise
        task.sampler.net[-1].weight.zero_()
        task.sampler.net[-1].bias.zero_()
    scores = task.set_metrics()
    assert scores["empty_samples"] == 0
    assert scores["cov"] == pytest.approx(0.5)  # every sample matches the 0.25 ball, none the 0.4 one
    # MMD: mean over references of the Chamfer-L2 (x1000) to the nearest sample; the 0.4 ball is 0.15 away
    assert 1000 * 0.15 ** 2 * 0.5 < scores["mmd"] < 1000 * 0.15 ** 2
    assert dtypes == [torch.bfloat16 if forced == "bf16" else torch.float32]


def test_gan_runs_under_two_process_ddp(tiny_shards, trained_autoencoder, tmp_path, launch):
    """`recon3d train` relaunches itself per rank (gloo); the critic's update leaves the generator unused, which
    plain DDP would refuse."""
    args = ["-c", "configs/tiny.yaml", "--shards", str(tiny_shards), "--run-dir", str(tmp_path), "train.stage=gan",
            f"gan.autoencoder_ckpt={trained_autoencoder}", *GAN_TINY, "train.devices=2", "train.strategy=ddp"]
    done = launch.recon3d("train", *args, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # printed by rank 0 only
    assert "stopped at epoch 2, step 6" in done.stdout  # 16 codes / 2 ranks / batch 4 = 2 batches: 2 critic + 1 g
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
