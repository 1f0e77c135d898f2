"""run(cfg) pieces: the best checkpoint is found by what its callback watches; a resumed epoch draws its own order."""

from types import SimpleNamespace

from recon3d.training.run import best_checkpoint


def test_best_checkpoint_is_found_by_its_monitor_not_its_place():
    callbacks = [SimpleNamespace(monitor=None, best_model_path="last.ckpt"),
                 SimpleNamespace(monitor="val/loss", best_model_path="extra.ckpt"),
                 SimpleNamespace(monitor="val/iou", best_model_path="best-003.ckpt")]
    assert best_checkpoint(callbacks, "val/iou") == "best-003.ckpt"
    assert best_checkpoint(callbacks[:2], "val/iou") == ""


def test_a_resumed_training_stream_draws_the_order_of_its_epoch(tiny_shards):
    """A stream made at epoch 2 (a resumed run) must give epoch 2's order, not replay epoch 0's."""
    from recon3d.data.datamodule import ShardDataModule

    def keys(epoch_made_at: int, epochs: int) -> list:
        dm = ShardDataModule(shards=str(tiny_shards), batch_size=2, num_workers=0, shuffle_buffer=2,
                             train_samples_per_epoch=6, rank=0, world_size=1)
        dm.setup()
        dm.trainer = SimpleNamespace(current_epoch=epoch_made_at)
        loader = dm.train_dataloader()
        return [[k for batch in loader for k in batch["key"]] for _ in range(epochs)]

    straight = keys(0, 3)  # epochs 0, 1, 2 in one run
    assert straight[0] != straight[2]
    assert keys(2, 1)[0] == straight[2]
