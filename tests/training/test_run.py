"""run(cfg) pieces: the best checkpoint is found by what its callback watches; a resumed epoch draws its own order;
a run folder is owned by one run of one stage, and a damaged checkpoint is passed over."""

from types import SimpleNamespace

import pytest

from recon3d.training.run import best_checkpoint
from tests.conftest import tiny_config


def test_best_checkpoint_is_found_by_its_monitor_not_its_place():
    callbacks = [SimpleNamespace(monitor=None, best_model_path="last.ckpt"),
                 SimpleNamespace(monitor="val/loss", best_model_path="extra.ckpt"),
                 SimpleNamespace(monitor="val/iou", best_model_path="best-003.ckpt")]
    assert best_checkpoint(callbacks, "val/iou") == "best-003.ckpt"
    assert best_checkpoint(callbacks[:2], "val/iou") == ""


def test_a_resumed_training_stream_draws_the_order_of_its_epoch(tiny_shards):
    """A stream made at epoch 2 (a resumed run) must give epoch 2's order, not replay epoch 0's."""
    from recon3d.data.loading.datamodule import ShardDataModule

    def keys(epoch_made_at: int, epochs: int) -> list:
        dm = ShardDataModule(shards=str(tiny_shards), batch_size=2, num_workers=0, shuffle_buffer=2,
                             train_samples_per_epoch=6, rank=0, world_size=1)
        dm.setup()
        progress = SimpleNamespace(current=SimpleNamespace(processed=epoch_made_at))  # as Lightning counts epochs
        dm.trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_progress=progress))
        loader = dm.train_dataloader()
        return [[k for batch in loader for k in batch["key"]] for _ in range(epochs)]

    straight = keys(0, 3)  # epochs 0, 1, 2 in one run
    assert straight[0] != straight[2]
    assert keys(2, 1)[0] == straight[2]


def test_a_checkpoint_taken_between_epochs_resumes_without_skipping_one(tiny_shards, tmp_path):
    """A preemption signal can land between two epochs (the next one counted ready, not started); resuming from that
    checkpoint must run that epoch, not count it as done (Lightning's restart would, losing a whole epoch)."""
    import lightning as L

    from recon3d.training.run import run
    from tests.conftest import tiny_config

    class SaveThenStop(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 2:
                trainer.save_checkpoint(tmp_path / "boundary.ckpt")
                raise SystemExit("preempted")  # the job ends here, as scontrol requeue would end it

    base = [f"loader.shards={tiny_shards}", "train.phase_epochs=[2,2]", "train.accelerator=cpu"]
    full = run(tiny_config(*base, f"train.run_dir={tmp_path / 'full'}"), enable_wandb=False,
               enable_progress_bar=False)
    try:
        run(tiny_config(*base, f"train.run_dir={tmp_path / 'cut'}"), enable_wandb=False, enable_progress_bar=False,
            extra_callbacks=[SaveThenStop()])
    except SystemExit:
        pass
    resumed = run(tiny_config(*base, f"train.run_dir={tmp_path / 'cut'}", f"train.resume={tmp_path / 'boundary.ckpt'}"),
                  enable_wandb=False, enable_progress_bar=False)
    assert (resumed.epoch, resumed.global_step) == (full.epoch, full.global_step)


def test_last_checkpoint_holds_the_final_step_with_step_checkpoints_on(tiny_shards, tmp_path):
    """checkpoint_every_steps=5 on 4-step epochs ending at step 16: last.ckpt was left at step 15 (every N steps
    turns Lightning's epoch-end saves off)."""
    from recon3d.tasks.checkpoints import read_checkpoint
    from recon3d.training.run import run
    from tests.conftest import tiny_config

    result = run(tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={tmp_path}", "train.accelerator=cpu",
                             "loader.train_samples_per_epoch=8", "train.phase_epochs=[2,2]",
                             "train.checkpoint_every_steps=5"), enable_wandb=False, enable_progress_bar=False)
    assert result.global_step == 16
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 16


def test_a_resume_with_a_changed_setting_refuses_optimiser_ones_and_says_which_others_apply(tiny_shards, tmp_path,
                                                                                            capsys):
    import pytest

    from recon3d.errors import ConfigError
    from recon3d.training.run import run
    from tests.conftest import tiny_config

    base = [f"loader.shards={tiny_shards}", f"train.run_dir={tmp_path}", "train.accelerator=cpu",
            "loader.train_samples_per_epoch=8", "train.phase_epochs=[1,1]"]
    run(tiny_config(*base), enable_wandb=False)
    with pytest.raises(ConfigError, match=r"would keep the old value of train.lr=0.01 \(trained with 0.001\)"):
        run(tiny_config(*base, "train.lr=0.01"), enable_wandb=False)
    result = run(tiny_config(*base, "train.phase_epochs=[1,2]"), enable_wandb=False)
    assert "with changed settings (applied): train.phase_epochs [1, 1] -> [1, 2]" in capsys.readouterr().err
    assert result.epoch == 3


def test_a_batch_larger_than_the_training_set_is_refused_before_training(tiny_shards, tmp_path):
    import pytest

    from recon3d.errors import ConfigError
    from recon3d.training.run import run
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError, match=r"loader.batch_size=100000 is more than the 8 training samples"):
        run(tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={tmp_path}", "train.accelerator=cpu",
                        "loader.batch_size=100000"), enable_wandb=False)


def test_a_resume_on_shards_rebuilt_with_other_settings_is_refused(tiny_meshes, tmp_path):
    import pytest

    from recon3d.data.writing.writer import build_shards
    from recon3d.errors import ConfigError
    from recon3d.training.run import run
    from tests.conftest import tiny_config

    shards = tmp_path / "shards"
    build_shards(tiny_config(f"source.root={tiny_meshes}", f"shards.out_dir={shards}", "shards.samples_per_shard=2",
                             "shards.split=[0.5,0.25,0.25]"), progress=False)
    base = [f"loader.shards={shards}", f"train.run_dir={tmp_path / 'run'}", "train.accelerator=cpu",
            "loader.train_samples_per_epoch=8", "train.phase_epochs=[1,1]"]
    run(tiny_config(*base), enable_wandb=False)
    build_shards(tiny_config(f"source.root={tiny_meshes}", f"shards.out_dir={shards}", "shards.samples_per_shard=2",
                             "shards.split=[0.5,0.25,0.25]", "render.views=4"), progress=False)  # rebuilt underneath
    with pytest.raises(ConfigError, match=r"rebuilt with other settings \(render.views 3 -> 4\)"):
        run(tiny_config(*base, "train.phase_epochs=[1,2]"), enable_wandb=False)


def test_training_order_is_a_function_of_seed_and_epoch_and_covers_the_set(tiny_shards, launch):
    """Loaders remade every epoch with num_workers=0 (the demo's setting): each epoch's order is the same in a new
    process and differs between epochs, and every training shape is seen within a few epochs."""
    import json

    from recon3d.data.loading.shards import load_manifest

    script = f"""
import json, sys
from types import SimpleNamespace
from recon3d.data.loading.datamodule import ShardDataModule
orders = []
for epoch in range(4):
    dm = ShardDataModule(shards={str(tiny_shards)!r}, batch_size=2, num_workers=0, shuffle_buffer=2, rank=0,
                         world_size=1)
    dm.setup()
    dm.trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_progress=SimpleNamespace(
        current=SimpleNamespace(processed=epoch))))
    orders.append([k for batch in dm.train_dataloader() for k in batch["key"]])
print(json.dumps(orders))
"""
    runs = [json.loads(launch.python_script(script, check=True).stdout) for _ in range(2)]
    assert runs[0] == runs[1]  # reproducible across processes (hash seeds differ between them)
    assert len({tuple(order) for order in runs[0]}) == 4  # a new order every epoch
    train = load_manifest(tiny_shards)["splits"]["train"]["samples"]
    assert len({k for order in runs[0][:3] for k in order}) == train  # every shape within 3 epochs


def test_auto_precision_is_bf16_mixed_only_where_the_hardware_has_bf16(monkeypatch):
    import torch

    from recon3d import hardware as io
    from recon3d.training.build import resolve_precision

    cpu = SimpleNamespace(precision="auto", accelerator="cpu")
    monkeypatch.setattr(io, "native_bf16_cpu", lambda: True)
    assert resolve_precision(cpu) == "bf16-mixed"
    monkeypatch.setattr(io, "native_bf16_cpu", lambda: False)
    assert resolve_precision(cpu) == "32-true"  # emulated bf16 would be slower than fp32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(SimpleNamespace(precision="auto", accelerator="auto")) == "32-true"  # e.g. a V100
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(SimpleNamespace(precision="auto", accelerator="gpu")) == "bf16-mixed"
    assert resolve_precision(SimpleNamespace(precision="16-mixed", accelerator="gpu")) == "16-mixed"  # as given


def test_a_run_folder_is_owned_by_one_run_at_a_time(tiny_shards, tmp_path):
    """While a run trains in a folder (its lock held), a second run into it stops before any work, naming it."""
    from recon3d.files import exclusive_lock
    from recon3d.training.run import RUN_LOCK, run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={run_dir}", "train.accelerator=cpu")
    with exclusive_lock(run_dir / RUN_LOCK, "held"):  # as the first run holds it
        with pytest.raises(ValueError, match=r"another run is training in this folder \(host .* pid \d+"):
            run(cfg, enable_wandb=False, enable_progress_bar=False)
    assert not (run_dir / "config.json").exists()


def test_a_folder_of_another_stage_or_a_file_is_refused(trained_svr, tmp_path):
    from recon3d.errors import ConfigError
    from recon3d.training.run import run

    svr_dir = trained_svr.parent.parent
    before = (svr_dir / "config.json").read_text()
    with pytest.raises(ConfigError, match="holds a svr run; train.stage=autoencoder trains in a folder of its own"):
        run(tiny_config(f"train.run_dir={svr_dir}", "train.accelerator=cpu"), enable_wandb=False)
    assert (svr_dir / "config.json").read_text() == before  # not rewritten
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        run(tiny_config(f"train.run_dir={tmp_path / 'afile'}", "train.accelerator=cpu"), enable_wandb=False)


@pytest.mark.parametrize("damage", [b"", b"garbage that is no zip"])
def test_a_damaged_last_checkpoint_resumes_from_the_best(trained_autoencoder, tmp_path, damage, capsys):
    import shutil

    from recon3d.errors import RunError
    from recon3d.training.run import resolve_resume

    run_dir = tmp_path / "run"
    shutil.copytree(trained_autoencoder.parent.parent, run_dir)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(damage)
    cfg = tiny_config(f"train.run_dir={run_dir}")
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    assert resolve_resume(cfg) == str(best)
    assert "last.ckpt: not a readable checkpoint; resuming from" in capsys.readouterr().err
    best.write_bytes(damage)
    with pytest.raises(RunError, match="no readable checkpoint to resume from"):
        resolve_resume(cfg)
