"""The stage table is the whole contract: a sixth stage given as a row, a task module and an inference module only
trains, evaluates, reports, joins the demo's steps and the SLURM chain, with no other change anywhere."""

from __future__ import annotations

import json

import pytest

from recon3d.cli.main import main
from recon3d.config import load_config
from recon3d.inference.protocol import MeshMaker, StageInference
from recon3d.stages import STAGES, Stage, demo_steps, register_stage
from tests.conftest import TINY

TOY = Stage("toy", "Toy (voxels -> share of occupied voxels)", "autoencoder", "tests.toy.task:ToyTask",
            "tests.toy.inference", lambda cfg: 2, "val/error", "min",
            (("toy training loss", ("train/loss",)), ("toy validation error", ("val/error",))), "", True,
            demo_share=0.02, demo_overrides=("train.lr=${train.beta1}",))


@pytest.fixture
def toy_stage():
    register_stage(TOY)
    try:
        yield TOY
    finally:
        del STAGES["toy"]


def test_every_stage_module_keeps_the_contract():
    for row in STAGES.values():
        assert isinstance(row.inference_module(), StageInference), row.inference
        assert row.task_class().stage == row.name
        assert hasattr(row.datamodule_class(), "from_config"), row.datamodule
    makers = {name for name, row in STAGES.items() if isinstance(row.inference_module(), MeshMaker)}
    assert makers == {"svr", "vrn"}


def test_demo_steps_follow_the_table():
    assert demo_steps() == ["meshes", "shards", "autoencoder", "latents", "svr", "gan", "vrn", "stereo", "evaluate",
                            "report"]


def test_register_refuses_a_name_twice_and_a_learner_without_an_exporter(monkeypatch):
    with pytest.raises(ValueError, match="exists already"):
        register_stage(STAGES["svr"])
    lonely = {name: row for name, row in STAGES.items() if not row.exports_latents}
    monkeypatch.setattr("recon3d.stages.STAGES", lonely)
    with pytest.raises(ValueError, match="no stage exports them"):
        register_stage(Stage("copycat", "t", "image", "m:C", "m", lambda cfg: 1, "val/x", "min", (), "", True,
                             learns_from="svr"))


def test_a_toy_stage_trains_evaluates_reports_joins_the_demo_and_the_chain(toy_stage, tiny_shards, tmp_path, capsys,
                                                                         monkeypatch):
    run = tmp_path / "toy"
    assert main(["train", "-c", str(TINY), "--shards", str(tiny_shards), "--run-dir", str(run), "train.stage=toy",
                 "train.accelerator=cpu", "train.logger=csv", "loader.train_samples_per_epoch=8"]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file() and list(run.glob("checkpoints/best-*.ckpt"))

    # evaluate: the run folder hands on its best checkpoint; the tables go to <run>/eval by default
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(run), "--shards", str(tiny_shards), "--split", "val", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "error" in printed and "absolute error of the predicted share" in printed
    summary = json.loads((run / "eval" / "eval_toy_val.json").read_text())
    assert 0 <= summary["mean over shapes"]["error"] < 1
    assert main(["eval", "--ckpt", str(run), "--shards", str(tiny_shards), "--draws", "2"]) == 2  # not its option
    assert "its options: --scale" in capsys.readouterr().err

    # report: its title, its curves and its table, from its row and its inference module
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    for part in ("Toy (voxels -&gt; share of occupied voxels)", "toy training loss", "toy validation error",
                 "absolute error of the predicted share"):
        assert part in page, part

    # the demo: a step with its share of the budget and its own settings
    from recon3d.workflows.demo import stage_config

    assert demo_steps()[-3] == "toy"
    cfg = load_config([], [])
    assert cfg.demo.shares["toy"] == 0.02
    toy_cfg = stage_config(cfg, tmp_path / "demo", "toy", 1.5)
    assert toy_cfg.train.stage == "toy" and toy_cfg.train.lr == cfg.train.beta1 and toy_cfg.train.max_minutes == 1.5
    out = tmp_path / "sheets"
    assert [p.name for p in toy_stage.inference_module().write_sheets(
        run / "checkpoints" / "last.ckpt", tiny_shards, split="val", keys=["chair/chair_000"], out_dir=out)] == \
        ["toy_sheet.png"]

    # the SLURM chain: a training job of its own (it needs no latents) and its evaluation in the eval job
    from recon3d.cluster import slurm

    submitted = []

    def fake_sbatch(sbatch_args, script=None, job_args=(), wrap=""):
        submitted.append((list(sbatch_args), list(job_args), wrap))
        return len(submitted)

    monkeypatch.setattr(slurm, "sbatch", fake_sbatch)
    jobs = slurm.submit_pipeline(shards=str(tiny_shards), out=str(tmp_path / "chain"))
    assert list(jobs) == ["autoencoder", "vrn", "toy", "latents", "svr", "gan", "eval"]  # no stereo pairs here
    toy_args = submitted[jobs["toy"] - 1][1]
    assert "train.stage=toy" in toy_args and not any(a.startswith("--dependency") for a in submitted[2][0])
    assert f"--ckpt {tmp_path / 'chain' / 'toy'}" in submitted[jobs["eval"] - 1][2]
    after = next(a for a in submitted[jobs["eval"] - 1][0] if a.startswith("--dependency=afterok:"))
    assert set(after.split(":")[1:]) == {str(jobs[s]) for s in ("autoencoder", "vrn", "toy", "svr", "gan")}
