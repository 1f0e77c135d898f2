"""Training callbacks: a rolling last.ckpt that is really written during training, atomically; checkpoint-then-stop
on preemption signals, with the preemption checkpoints pruned; a line per rank saying where it runs; a line per epoch
where a progress bar would flood a job log."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from recon3d.errors import Stopped
from recon3d.files import atomic_path
from recon3d.tasks.checkpoints import consolidated_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temp name beside it and renames it: a job killed mid-write leaves the old file
    intact. torch.save writes there itself: Lightning's own save goes through an fsspec transaction, which stages the
    file in $TMPDIR first, so a nearly full /tmp saved no checkpoint however much room the run folder had, and a full
    disk named a staging file (tmpXXXXXXXX) instead of the checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as err:  # a full disk: named as the checkpoint it was writing, not its temp file
            raise OSError(err.errno, err.strerror, str(path)) from err
        except RuntimeError as err:  # torch.save reports a failed write (a full disk too) as its zip writer's error
            disk = os.statvfs(Path(path).parent)
            if disk.f_bavail * disk.f_frsize < 2**20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
            raise


def rolling_last_checkpoint(dirpath: Path, every_n_train_steps: int = 0) -> List[ModelCheckpoint]:
    """ModelCheckpoints that keep exactly one file, last.ckpt, rewritten at every epoch end (so it always holds the
    final step) and, with every_n_train_steps, every N steps as well.

    Lightning's own save_last only writes last.ckpt when a top-k checkpoint was saved in the same step, so with
    save_top_k=0 it would appear only when training ends; these keep one "top" checkpoint named last instead. A
    ModelCheckpoint given every_n_train_steps stops saving at epoch ends (a run ending at step 34 with N=5 kept step
    30), hence a second one for the epoch ends.
    """
    kwargs = dict(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_last=False,
                  enable_version_counter=False)
    epochs = ModelCheckpoint(**kwargs, save_on_train_epoch_end=True)
    if not every_n_train_steps:
        return [epochs]
    return [epochs, _EveryNSteps(**kwargs, every_n_train_steps=every_n_train_steps)]


class _EveryNSteps(ModelCheckpoint):
    """The every-N-steps half of the rolling last.ckpt: an epoch's last batch is left to the epoch-end save (one
    write per step, which matters for a DeepSpeed folder)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 < trainer.num_training_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


HPC_NAME = re.compile(r"hpc_ckpt_(\d+)\.ckpt$")


def hpc_checkpoints(run_dir: Path) -> List[Path]:
    """The preemption checkpoints of a run folder (files, or ZeRO folders), oldest first by their number; their
    consolidated fp32 files (hpc_ckpt_N.fp32.ckpt) are not among them."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("hpc_ckpt_*.ckpt") if (m := HPC_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_hpc_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` preemption checkpoints (with their fp32 files); delete the rest."""
    for old in hpc_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        for path in (old, consolidated_path(old)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()


class Preempted(Stopped):
    """Training stopped on a signal after saving `checkpoint` at `step`; the same command resumes from it."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.step, self.checkpoint = step, checkpoint
        super().__init__(signum, f"{signal.Signals(signum).name}: saved a checkpoint at step {step} to {checkpoint}; "
                         "the same command resumes from it")


class Preemption(Callback):
    """SIGTERM (how SLURM preempts, cancels and ends a job, and how most schedulers stop a process), SIGINT (Ctrl-C;
    twice: at once, no checkpoint) and SLURM's requeue signal (--signal=USR1@90) stop training at the end of the
    current optimiser step, with a checkpoint.

    The handler only notes the signal. At each step's end the ranks agree whether any of them got one (a collective
    in the training loop, never in a signal handler), then all save hpc_ckpt_N.ckpt together (at the epoch's end,
    after its validation, when the step was the epoch's last) (a ZeRO folder under
    DeepSpeed), the oldest beyond `keep` are deleted, rank 0 requeues the job for the requeue signal (SLURM requeues
    a preempted job itself), and Preempted is raised once Lightning has logged the step (the CLI exits 128 + the
    signal's number). Lightning's own
    handlers are replaced for the run: its SIGTERM handler stops without a checkpoint and exits 0."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.signum = 0
        self._stop: Optional[Preempted] = None
        self._at_epoch_end = 0  # a signal agreed on during an epoch's last batch: saved at the epoch's end
        self._previous: dict = {}
        self._requeue_signal: Optional[int] = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.signum, self._stop, self._at_epoch_end = 0, None, 0
        if threading.current_thread() is not threading.main_thread():
            return  # e.g. a Ray Tune trial runs in a thread; signals reach only the main thread
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            self._requeue_signal = environment.requeue_signal
        for signum in {signal.SIGTERM, signal.SIGINT, self._requeue_signal or signal.SIGTERM}:
            self._previous[signum] = signal.signal(signum, self._note)
        if self._requeue_signal and _OUTSIDE_TRAINING.pop(self._requeue_signal, False):
            self._note(self._requeue_signal, None)  # it came during the setup: checkpoint and requeue at step 1

    def _note(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint
        if not self.signum:
            print(f"recon3d: {signal.Signals(signum).name} received (pid {os.getpid()}); checkpointing at the end "
                  "of this step", file=sys.stderr, flush=True)
        self.signum = self.signum or signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stop is not None or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # inside an accumulation window: no optimiser step yet
        if not trainer.strategy.reduce_boolean_decision(bool(self.signum), all=False):
            return
        signum = self.signum or signal.SIGTERM  # a rank the signal has not reached yet stops with the others
        if batch_idx + 1 >= trainer.num_training_batches:
            # the epoch's last batch: save at the epoch's end, where Lightning's own epoch checkpoints are taken.
            # Saved here, Lightning resumed by ending that epoch and then the next one with no batch (an epoch lost)
            self._at_epoch_end = signum
            return
        self._save(trainer, signum)

    def _save(self, trainer, signum: int) -> None:
        path = Path(trainer.strategy.broadcast(
            trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)))
        trainer.save_checkpoint(path, weights_only=False)
        trainer.strategy.barrier("recon3d-preempted")
        if trainer.is_global_zero:
            prune_hpc_checkpoints(Path(trainer.default_root_dir), self.keep)
            print(f"recon3d: step {trainer.global_step} saved to {path}", file=sys.stderr, flush=True)
            if signum == self._requeue_signal:
                _requeue_slurm_job()
        # stop once Lightning has logged this step's metrics (it does so after this hook): at whatever comes next
        self._stop = Preempted(signum, trainer.global_step, path)

    def _raise(self, trainer) -> None:
        if self._stop is not None:
            for logger in trainer.loggers:
                logger.save()
            raise self._stop

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._raise(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._raise(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._at_epoch_end and self._stop is None:
            self._save(trainer, self._at_epoch_end)
        self._raise(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._raise(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._note:  # Lightning's teardown, before this, put back what it found
                signal.signal(signum, handler)
        self._previous.clear()


_OUTSIDE_TRAINING: dict = {}  # signum -> True: a requeue signal that came while no training ran


@contextmanager
def requeue_signal_outside_training(signum: int = signal.SIGUSR1) -> Iterator[None]:
    """For a CLI process in a SLURM job: SLURM's requeue signal (--signal=USR1@90) can come while no trainer fits,
    during the setup or after the last step (checkpoints consolidated, the summary printed, the interpreter
    exiting). Its default action kills the process, failing a job whose training had ended. Inside, it is noted: a
    training that then starts checkpoints and requeues at its first step (Preemption). After, it is ignored: the
    training is over, and while Python shuts down it puts back the default action of any signal it handles."""
    if "SLURM_JOB_ID" not in os.environ or signal.getsignal(signum) is not signal.SIG_DFL:
        yield
        return

    def note(got, frame) -> None:
        print(f"recon3d: {signal.Signals(got).name} received (pid {os.getpid()}) while no training runs: a "
              "training that starts checkpoints and requeues at its first step, a finished one needs nothing",
              file=sys.stderr, flush=True)
        _OUTSIDE_TRAINING[got] = True

    signal.signal(signum, note)
    try:
        yield
    finally:
        signal.signal(signum, signal.SIG_IGN)
        _OUTSIDE_TRAINING.pop(signum, None)


def _requeue_slurm_job() -> None:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    print(f"recon3d: requeued SLURM job {job}" if done.returncode == 0 else
          f"recon3d: could not requeue SLURM job {job}: {done.stderr.strip()}", file=sys.stderr, flush=True)


class WeightEma(WeightAveraging):
    """train.ema_decay: an exponential moving average of the task's weights and buffers (BatchNorm's statistics),
    updated after every training step (Lightning's WeightAveraging). Validation sees the average, so the best
    checkpoint is chosen by it; every checkpoint's state_dict holds it (what inference, export and the later stages
    load) and keeps the live weights beside it for a resume. The average is made when fit starts, not at setup: the
    tasks register buffers in their own setup, which runs after the callbacks', and a copy made before it would pair
    the wrong tensors; a resumed checkpoint's weights are applied to it then."""

    def __init__(self, decay: float) -> None:
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))
        self._resumed: Optional[dict] = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        pass

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._resumed = checkpoint

    def on_fit_start(self, trainer, pl_module) -> None:
        super().setup(trainer, pl_module, "fit")
        if self._resumed is not None:
            super().on_load_checkpoint(trainer, pl_module, self._resumed)
            self._resumed = None


class RankBanner(Callback):
    """One line per rank when training starts: where it runs and whom it talks to (host, node, local rank, the
    rendezvous address Lightning chose, the CPUs the scheduler bound it to)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.world_size == 1 and "SLURM_JOB_ID" not in os.environ:
            return
        environment = trainer._accelerator_connector.cluster_environment
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        print(f"recon3d: rank {trainer.global_rank}/{trainer.world_size} on {socket.gethostname()} (node "
              f"{trainer.node_rank}, local rank {trainer.local_rank}), rendezvous {environment.main_address}:"
              f"{environment.main_port}, CPUs {_ranges(cpus)}", flush=True)


def _ranges(values: List[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    parts, start = [], None
    for i, value in enumerate(values):
        start = value if start is None else start
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(f"{start}-{value}" if value > start else str(value))
            start = None
    return ",".join(parts)


class EpochLog(Callback):
    """Instead of a progress bar (batch jobs, where it floods the log): one line per epoch on rank 0."""

    def __init__(self) -> None:
        self._started = time.time()  # a run resumed mid-epoch starts without on_train_epoch_start

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started = time.time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(trainer.callback_metrics.items())
                           if v.numel() == 1 and not k.startswith("lr-"))
        print(f"recon3d: epoch {trainer.current_epoch} done at step {trainer.global_step} in "
              f"{time.time() - self._started:.1f} s: {values}", flush=True)
