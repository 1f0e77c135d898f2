"""Population-based training: a restored optimiser takes the config's settings but keeps its state and its schedule's
progress; a PBT sweep copies a better trial's checkpoint into a worse one, which trains on with perturbed settings;
sweep files PBT cannot serve are refused in one line."""

import csv
import json
import os
from types import SimpleNamespace

import pytest
import torch

from recon3d.errors import ConfigError
from recon3d.training.pbt import LOG, OptimiserFromConfig
from tests.conftest import tiny_sweep_file


def _optimiser(lr, betas, steps=0):
    weight = torch.nn.Parameter(torch.ones(3))
    optimiser = torch.optim.Adam([weight], lr=lr, betas=betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - 0.1 * step)
    for _ in range(steps):
        weight.grad = torch.ones(3)
        optimiser.step()
        schedule.step()
    return optimiser, schedule


def test_the_configs_settings_replace_the_restored_ones_and_the_state_and_progress_stay():
    restored, schedule = _optimiser(1e-3, (0.5, 0.999), steps=4)  # as a checkpoint left it: 0.6 of the way
    moments = restored.state_dict()["state"][0]["exp_avg"].clone()
    module = SimpleNamespace(configure_optimizers=lambda: dict(zip(("optimizer", "lr_scheduler"),
                                                                   _optimiser(4e-3, (0.9, 0.99)))))
    trainer = SimpleNamespace(optimizers=[restored], lr_scheduler_configs=[SimpleNamespace(scheduler=schedule)])
    OptimiserFromConfig().on_train_start(trainer, module)
    group = restored.param_groups[0]
    assert group["lr"] == pytest.approx(4e-3 * 0.6) and group["betas"] == (0.9, 0.99)
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], moments)  # Adam's moments kept
    schedule.step()
    assert group["lr"] == pytest.approx(4e-3 * 0.5)  # the schedule goes on from the new rate


@pytest.mark.parametrize("space, extra, message", [
    ({"train.lr": {"grid": [1e-3, 1e-2]}}, {}, "PBT perturbs from a distribution; grid has none"),
    ({"model.latent_dim": {"choice": [8, 16]}}, {}, "perturbs only settings a checkpoint does not fix"),
    ({"train.lr": {"loguniform": [1e-4, 1e-2]}}, {"search": "optuna"}, "search=optuna does not apply")])
def test_sweep_files_pbt_cannot_serve_are_one_line(tiny_shards, tmp_path, space, extra, message):
    from recon3d.training.sweep_file import load_sweep

    path = tiny_sweep_file(tmp_path / "pbt.yaml", tiny_shards, scheduler="pbt", search_space=space, **extra)
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_a_pbt_sweep_restarts_worse_trials_from_better_ones_with_perturbed_settings(tiny_shards, tmp_path, launch):
    pytest.importorskip("ray", reason="Ray is installed with the dev extra")
    sweep = tiny_sweep_file(tmp_path / "pbt.yaml", tiny_shards, "train.phase_epochs=[2,4]", scheduler="pbt",
                            num_samples=2, max_concurrent=2, seed=3, synch=True,  # each waits for the other
                            metric="val/loss", mode="min",  # never a tie:
                            search_space={"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}})  # equal IoUs (0) exploit none
    done = launch.recon3d("sweep", "-c", str(sweep), timeout=600, env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = tmp_path / "sweeps" / "pbt"
    rows = json.loads((folder / "trials.json").read_text())
    assert len(rows) == 2 and {r["epoch"] for r in rows} == {5}  # both trained the whole schedule
    copied = []
    for trial in (folder / "trials").iterdir():
        log = trial / LOG
        starts = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        for start in starts:  # the CSV log of the segment after each start (none when it trained no step)
            segment = trial / "logs" / f"version_{start['log_version']}" / "metrics.csv"
            rows_after = [row for row in csv.DictReader(segment.open()) if row.get("lr-Adam")] \
                if segment.is_file() else []
            if start["copied_trial"] != trial.name and rows_after:
                copied.append((trial, start, float(rows_after[-1]["lr-Adam"])))
    assert copied, "no trial went on from another trial's checkpoint"
    for trial, start, lr in copied:  # its optimiser trained with the perturbed settings, not the copied ones
        assert lr == pytest.approx(start["params"]["train.lr"])
    for row in rows:  # each row: the settings its trial trained with last (not the copied trial's)
        saved = json.loads((folder / "trials" / row["trial"] / "config.json").read_text())
        assert row["params"]["train.lr"] == pytest.approx(saved["train"]["lr"])
    assert len({row["trial"] for row in rows}) == 2
