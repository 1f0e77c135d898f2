"""Batches from DataLoader workers to the trainer through reused shared memory.

A batch of fresh tensors crosses the worker pipe as new shared-memory segments, mapped and faulted in page by page
on both sides and thrown away after one use: on a VM that costs more than decoding the batch (docs/results.md,
data). Here every worker keeps a small ring of shared uint8 buffers and
stacks each batch's samples straight into a free one; only (slot number, layout) travel, plus each buffer once per
iteration (torch passes it as a file descriptor, which costs milliseconds), so no page is touched twice for the
first time. The trainer copies the tensors out (`SlotLoader`, a DataLoader) and marks the slot free in a shared
flag array.

A slot is free when its flag is 0 or was written in an earlier iteration of the worker (batches of an abandoned
iterator are never read). A worker that finds no slot free within `WAIT_S` sends its batch the ordinary way, so a
trainer that stops reading can never block a worker.
"""

from __future__ import annotations

import math
import os
import time
from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

SLOT_KEY = "__recon3d_slot__"
WAIT_S = 0.05
ALIGN = 64


def collate(samples: List[dict]) -> dict:
    """Stack a list of decoded samples into tensors (keys stay a list of strings)."""
    out = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        out[name] = values if isinstance(values[0], str) else torch.as_tensor(np.stack(values))
    return out


def keep_batch(batch):
    """The DataLoader's collate_fn: streams yield whole batches of tensors already (its default walks every entry
    again to convert NumPy arrays)."""
    return batch


class SlotWriter:
    """A worker's ring of shared buffers (made on first use, grown when a batch needs more room)."""

    def __init__(self, slots: int) -> None:
        self.buffers: List[Optional[torch.Tensor]] = [None] * slots
        self.views: List[Optional[np.ndarray]] = [None] * slots  # the same memory, as NumPy sees it
        self.flags = torch.zeros(slots, dtype=torch.uint8).share_memory_()
        self.mark = 0
        self.next = 0
        self.sent: set = set()  # slots whose buffer the trainer has been sent in this iteration

    def new_iteration(self) -> None:
        self.mark = self.mark % 255 + 1
        self.sent = set()

    def _free_slot(self) -> Optional[int]:
        deadline = time.monotonic() + WAIT_S
        while True:
            for step in range(len(self.buffers)):
                k = (self.next + step) % len(self.buffers)
                if int(self.flags[k]) != self.mark:  # 0 (read) or a mark of an earlier iteration
                    self.next = (k + 1) % len(self.buffers)
                    return k
            if time.monotonic() > deadline:
                return None
            time.sleep(0.0005)

    def pack(self, samples: List[dict]) -> dict:
        """A batch of decoded samples, stacked straight into a free slot (no intermediate tensors); collated the
        ordinary way when no slot is free."""
        fields = [(name, samples[0][name]) for name in samples[0] if not isinstance(samples[0][name], str)]
        layout, total = [], 0
        for name, first in fields:
            array = np.asarray(first)
            layout.append((name, total, str(array.dtype), (len(samples),) + array.shape))
            total += -(-len(samples) * array.nbytes // ALIGN) * ALIGN
        k = self._free_slot()
        if k is None:
            return collate(samples)
        if self.buffers[k] is None or self.buffers[k].numel() < total:
            self.buffers[k] = torch.empty(max(total, 1) + total // 4, dtype=torch.uint8).share_memory_()
            self.views[k] = self.buffers[k].numpy()
            self.sent.discard(k)
        view = self.views[k]
        for name, offset, dtype, shape in layout:
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            np.stack([s[name] for s in samples], out=view[offset:offset + size].view(dtype).reshape(shape))
        self.flags[k] = self.mark
        out = {name: [s[name] for s in samples] for name in samples[0] if isinstance(samples[0][name], str)}
        # Each buffer (and the flags) travels once per iteration, as a file descriptor; after that the trainer
        # finds it in its cache (passing a descriptor costs milliseconds). Once per iteration, because messages of
        # an abandoned iterator may never be read.
        first = not self.sent
        out[SLOT_KEY] = (os.getpid(), k, layout, None if k in self.sent else self.buffers[k],
                         self.flags if first else None)
        self.sent.add(k)
        return out


def unpack(batch: dict, cache: dict) -> dict:
    """A batch as the worker made it: tensors copied out of their slot, which is then marked free. `cache` keeps
    the buffers and flags received so far, by worker pid."""
    if not isinstance(batch, dict) or SLOT_KEY not in batch:
        return batch
    pid, k, layout, buffer, flags = batch.pop(SLOT_KEY)
    if flags is not None:
        cache[pid] = flags
    if buffer is not None:
        cache[pid, k] = buffer
    buffer, flags = cache[pid, k], cache[pid]
    for name, offset, dtype, shape in layout:
        size = math.prod(shape) * np.dtype(dtype).itemsize
        batch[name] = torch.from_numpy(buffer[offset:offset + size].numpy().view(dtype).reshape(shape).copy())
    flags[k] = 0
    return batch


class SlotLoader(DataLoader):
    """A DataLoader whose batches may arrive through worker slots (see module doc); iterates like any other.

    Resumable mid-epoch, through the ShardDataModule that makes it (its state in every checkpoint says how many of
    the epoch's batches were taken; the stream skips those): the loader has nothing of its own to save, and says so
    to Lightning with an empty state."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __iter__(self):
        cache: dict = {}
        for batch in super().__iter__():
            yield unpack(batch, cache)
