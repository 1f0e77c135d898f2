"""W&B artifacts: a training run records the shards it read and the checkpoint it made (svr also the autoencoder and
its latents); offline each output names its inputs, online they are use_artifact edges. Validation meshes go to W&B
as GLB files."""

import json
import time
from types import SimpleNamespace

import numpy as np

from tests.conftest import tiny_config
from tests.training.test_callbacks_preemption import wandb_records


def _artifacts(run_dir, wanted: int = 1, wait_s: float = 30.0):
    """{name: (type, metadata)} of the artifacts logged in the run folder's offline W&B runs, once there are `wanted`
    of them or `wait_s` has passed (W&B's service writes an offline run's artifact records after finish() returns)."""
    deadline = time.monotonic() + wait_s
    while True:
        late = time.monotonic() > deadline
        try:
            found = _read_artifacts(run_dir)
        except Exception:  # a record being written as we read: read again
            if late:
                raise
            found = {}
        if len(found) >= wanted or late:
            return found
        time.sleep(0.2)


def _read_artifacts(run_dir):
    found = {}
    for path in run_dir.rglob("offline-run-*/run-*.wandb"):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "artifact":
                found[record.artifact.name] = (record.artifact.type, json.loads(record.artifact.metadata or "{}"))
    return found


def test_offline_training_runs_log_their_checkpoints_naming_their_inputs(tiny_shards, trained_autoencoder,
                                                                           tmp_path, monkeypatch):
    from recon3d.training.run import run

    monkeypatch.setenv("WANDB_SILENT", "true")
    svr_dir = tmp_path / "svr"
    cfg = tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={svr_dir}", "train.stage=svr",
                      f"svr.autoencoder_ckpt={trained_autoencoder}", "svr.base_width=4", "svr.epochs=1",
                      "loader.train_samples_per_epoch=4", "train.accelerator=cpu", "train.logger=wandb",
                      "train.wandb_mode=offline")
    result = run(cfg, enable_progress_bar=False)
    logged = _artifacts(svr_dir)
    name = f"svr-{tmp_path.name}"  # a run folder named like its stage is named by the folder above it
    assert set(logged) == {name}
    kind, metadata = logged[name]
    assert kind == "model" and metadata["stage"] == "svr" and "val/iou" in metadata["metrics"]
    ae_run = trained_autoencoder.parent.parent
    inputs = metadata["inputs"]
    assert inputs[0].startswith("shards-") and inputs[1:] == [f"autoencoder-{ae_run.name}", f"latents-{ae_run.name}"]
    assert result.best_checkpoint is not None


def test_online_inputs_are_used_and_outputs_logged():
    from recon3d.training.lineage import link

    calls = []
    run = SimpleNamespace(offline=False, summary={}, use_artifact=lambda a: calls.append(("use", a.name)),
                          log_artifact=lambda a: calls.append(("log", a.name, a.metadata["inputs"])))
    inputs = [SimpleNamespace(name="shards-x"), SimpleNamespace(name="autoencoder-y")]
    outputs = [SimpleNamespace(name="svr-z", metadata={})]
    assert link(run, inputs, outputs) == ["shards-x", "autoencoder-y"]
    assert calls == [("use", "shards-x"), ("use", "autoencoder-y"), ("log", "svr-z", ["shards-x", "autoencoder-y"])]
    offline = SimpleNamespace(offline=True, summary={}, use_artifact=None, log_artifact=lambda a: calls.append(a.name))
    link(offline, inputs, [SimpleNamespace(name="svr-w", metadata={})])
    assert calls[-1] == "svr-w" and offline.summary["lineage/inputs"] == ["shards-x", "autoencoder-y"]


def test_record_job_links_a_step_that_does_not_train(tiny_shards, trained_autoencoder, tmp_path, monkeypatch):
    from recon3d.data.loading.latents import default_latents
    from recon3d.training.lineage import latents_artifact, model_artifact, record_job

    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config("train.logger=wandb", "train.wandb_mode=offline")
    folder = default_latents(tiny_shards, trained_autoencoder)
    record_job(cfg, "export-latents", "latents", lambda: [model_artifact("autoencoder", trained_autoencoder)],
               lambda: [latents_artifact(folder, trained_autoencoder)], tmp_path / "jobs")
    logged = _artifacts(tmp_path / "jobs")
    ae_run = trained_autoencoder.parent.parent.name
    assert logged[f"latents-{ae_run}"][0] == "latents"
    assert logged[f"latents-{ae_run}"][1]["inputs"] == [f"autoencoder-{ae_run}"]
    record_job(tiny_config("train.logger=csv"), "export-latents", "latents", lambda: [], lambda: [], tmp_path / "none")
    assert not (tmp_path / "none").exists()  # W&B off: nothing


def test_latents_and_model_artifacts_name_a_run_folder_as_its_checkpoint(tiny_shards, trained_autoencoder):
    from recon3d.data.loading.latents import default_latents
    from recon3d.training.lineage import latents_artifact, model_artifact

    folder, run_dir = default_latents(tiny_shards, trained_autoencoder), trained_autoencoder.parent.parent
    assert latents_artifact(folder, run_dir).name == latents_artifact(folder, trained_autoencoder).name
    assert latents_artifact(folder, run_dir).name == f"latents-{run_dir.name}"
    assert model_artifact("autoencoder", run_dir).name == f"autoencoder-{run_dir.name}"


def test_validation_meshes_become_glb_files_w_and_b_reads(tmp_path):
    import trimesh
    import wandb

    from recon3d.tasks.pictures import _mesh_files

    box = trimesh.creation.box()
    files = _mesh_files(tmp_path, 3, [(box.vertices, box.faces), (np.zeros((0, 3)), np.zeros((0, 3), int))])
    assert [f.name for f in files] == ["epoch_0003_0.glb"]
    assert len(trimesh.load(files[0], force="mesh").faces) == 12
    assert wandb.Object3D(str(files[0]))._extension == ".glb"
