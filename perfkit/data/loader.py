"""Train and validation loaders: memory-mapped windows, one gather per batch, background prefetch.

Hot path of one training micro-batch (B samples of S + 1 tokens on disk width w = 1, 2 or 4 bytes):
  sampler.batch -> (B,) global sample indices                      [numpy, O(B)]
  WindowDataset.gather -> (B, S+1) uint{8,16,32} in a pinned buffer  [one fancy-index copy per file]
  .to(device, non_blocking=True) on a side stream                  [B*(S+1)*w bytes over PCIe]
  widen to int64 on the device, split into inputs/targets (B, S)   [two small device kernels]
All of that runs `cfg.prefetch` batches ahead on a background thread; the training thread only
takes a ready batch from a queue and makes its stream wait on the copy's CUDA event (no host sync).

The loader's position is (epoch, global samples consumed in that epoch) of the batches HANDED OUT,
never of the prefetched ones, so `state_dict()` resumes exactly where the training loop is.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from perfkit.data.sampler import ResumableDistributedSampler
from perfkit.data.windows import WindowDataset, WindowError, pbin_paths
from perfkit.errors import UserError

# Tokens are staged in their on-disk width and widened on the device. torch >= 2.3 copies
# uint16/uint32 tensors ("barebones" unsigned dtypes) to int64 directly; where a build cannot, the
# bytes are staged as int16/int32 and the sign extension is undone with a mask after widening.
_UNSIGNED = {1: torch.uint8, 2: torch.uint16, 4: torch.uint32}
_SIGNED = {1: (torch.uint8, None), 2: (torch.int16, 0xFFFF), 4: (torch.int32, 0xFFFFFFFF)}
_UNSIGNED_OK: dict[str, bool] = {}


def stage_dtype(token_width: int, device: torch.device) -> tuple[torch.dtype, int | None]:
    """(dtype to stage tokens in, mask to apply after widening or None) for this device type."""
    if device.type not in _UNSIGNED_OK:
        try:  # a one-time probe, not on the hot path
            ok = True
            for dtype, top in ((torch.uint16, 2 ** 16 - 1), (torch.uint32, 2 ** 32 - 1)):
                host = torch.tensor([top], dtype=torch.int64).to(dtype)
                ok = ok and int(host.numpy()[0]) == top  # the gather writes through .numpy()
                ok = ok and host.to(device).to(torch.int64).cpu().tolist() == [top]
            _UNSIGNED_OK[device.type] = ok
        except (RuntimeError, TypeError):
            _UNSIGNED_OK[device.type] = False
    if _UNSIGNED_OK[device.type]:
        return _UNSIGNED[token_width], None
    return _SIGNED[token_width]


def widen(raw: torch.Tensor, mask: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S+1) staged tokens -> inputs, targets: contiguous int64 (B, S), on raw's device.

    Each half is converted straight from the narrow tensor (one read, one write per token).
    """
    inputs = raw[:, :-1].to(torch.int64, memory_format=torch.contiguous_format)
    targets = raw[:, 1:].to(torch.int64, memory_format=torch.contiguous_format)
    if mask is not None:
        inputs.bitwise_and_(mask)
        targets.bitwise_and_(mask)
    return inputs, targets


def _staging_view(t: torch.Tensor, np_dtype: np.dtype) -> np.ndarray:
    """A numpy view of a (pinned) CPU tensor with the on-disk dtype, so the gather writes into it."""
    return t.numpy().view(np_dtype)


class TrainLoader:
    """Endless micro-batches of one rank; epochs roll over with seed + epoch."""

    def __init__(self, dataset: WindowDataset, sampler: ResumableDistributedSampler,
                 device: torch.device, prefetch: int = 2):
        self.dataset = dataset
        self.sampler = sampler
        self.device = _resolve(device)
        self.prefetch = max(1, int(prefetch))
        self.num_samples = dataset.num_samples
        self.samples_per_rank_per_epoch = sampler.samples_per_rank_per_epoch
        self.micro_batch_size = sampler.micro_batch_size
        self.seq_len = dataset.seq_len
        self.time_waiting_s = 0.0  # cumulative seconds next_batch blocked on the prefetch queue
        self._epoch, self._consumed, self._total = 0, 0, 0
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None

    # ---- position ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "consumed_in_epoch": self._consumed,
                "consumed_total": self._total, "num_samples": self.num_samples,
                "seed": self.sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by state_dict (on any world size with the same global batch)."""
        try:
            epoch, consumed = int(state["epoch"]), int(state["consumed_in_epoch"])
            total = int(state.get("consumed_total", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"loader state {state!r} lacks epoch/consumed_in_epoch") from e
        for key, mine in (("num_samples", self.num_samples), ("seed", self.sampler.seed)):
            if key in state and int(state[key]) != mine:
                raise UserError(f"loader state was saved with {key}={state[key]} but the configured "
                                 f"data gives {key}={mine}; resuming would not continue the same order")
        self.close()  # prefetched batches belong to the old position
        self._epoch, self._consumed = self.sampler.normalize(epoch, consumed)
        self._total = total

    # ---- batches -------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), both int64 (B, S) on the device."""
        if self._thread is None:
            self._start()
        t0 = time.perf_counter()
        item = self._queue.get()
        self.time_waiting_s += time.perf_counter() - t0
        if isinstance(item, BaseException):
            self.close()
            raise item
        epoch, consumed, inputs, targets, ready = item
        if (epoch, consumed) != (self._epoch, self._consumed):  # producer and state must agree
            raise RuntimeError(f"prefetch out of step: got ({epoch}, {consumed}), "
                               f"expected ({self._epoch}, {self._consumed})")
        if ready is not None:  # CUDA: order the compute stream after the copy, without a host sync
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(ready)
            inputs.record_stream(stream)
            targets.record_stream(stream)
        self._epoch, self._consumed = self.sampler.advance(self._epoch, self._consumed)
        self._total += self.sampler.global_batch
        return inputs, targets

    def __iter__(self):
        while True:
            yield self.next_batch()

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_produce, name="perfkit-prefetch", daemon=True,
            args=(self.sampler, self.dataset, self.device, self.prefetch, self._epoch, self._consumed,
                  self._queue, self._stop))
        self._thread.start()

    def close(self) -> None:
        """Stop the prefetch thread and drop what it staged (safe to call more than once)."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        self._thread, self._queue, self._stop = None, None, None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

def _produce(sampler: ResumableDistributedSampler, dataset: WindowDataset, device: torch.device,
             prefetch: int, epoch: int, consumed: int, out: queue.Queue, stop: threading.Event) -> None:
    """The prefetch thread: stage batches from (epoch, consumed) on, until `stop` is set.

    A module-level function (not a method) so the thread holds no reference to the TrainLoader,
    which can then be garbage-collected and close itself.
    """
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)  # the current device is per thread
        stager = _Stager(dataset, sampler.micro_batch_size, device, prefetch)
        while not stop.is_set():
            idx = sampler.batch(epoch, consumed)  # (B,) global sample indices
            inputs, targets, ready = stager.stage(idx, epoch)
            _put_until_stopped(out, (epoch, consumed, inputs, targets, ready), stop)
            epoch, consumed = sampler.advance(epoch, consumed)
    except BaseException as e:  # hand the error to the training thread
        _put_until_stopped(out, e, stop)


def _put_until_stopped(out: queue.Queue, item, stop: threading.Event) -> None:
    """Block until the queue takes `item`, but give up when the loader is closed (polling, so a
    closed loader never leaves this thread stuck on a full queue)."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


class _Stager:
    """Gathers a batch into a staging buffer and moves it to the device, widened to int64.

    On CUDA a ring of prefetch + 1 pinned buffers is reused; a buffer is overwritten only after the
    event of its previous host-to-device copy has fired (this waits in the prefetch thread only).
    """

    def __init__(self, dataset: WindowDataset, batch: int, device: torch.device, prefetch: int):
        self.dataset = dataset
        self.device = device
        self.stage_dtype, self.mask = stage_dtype(dataset.files[0].token_width, device)
        self.shape = (batch, dataset.seq_len + 1)
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.stream = torch.cuda.Stream(device)
            self.slots = [torch.empty(self.shape, dtype=self.stage_dtype, pin_memory=True)
                          for _ in range(prefetch + 1)]
            self.events: list[torch.cuda.Event | None] = [None] * len(self.slots)
            self.next_slot = 0

    def stage(self, idx: np.ndarray, epoch: int):
        if not self.cuda:  # the CPU is the device: a fresh buffer, since the consumer keeps it
            host = torch.empty(self.shape, dtype=self.stage_dtype)
            self.dataset.gather(idx, epoch, out=_staging_view(host, self.dataset.dtype))
            inputs, targets = widen(host.to(self.device), self.mask)
            return inputs, targets, None
        k = self.next_slot
        self.next_slot = (k + 1) % len(self.slots)
        if self.events[k] is not None:
            self.events[k].synchronize()  # the previous copy out of this pinned buffer is done
        host = self.slots[k]
        self.dataset.gather(idx, epoch, out=_staging_view(host, self.dataset.dtype))
        with torch.cuda.stream(self.stream):
            raw = host.to(self.device, non_blocking=True)  # (B, S+1) narrow ints
            inputs, targets = widen(raw, self.mask)        # (B, S) int64 each
            ready = torch.cuda.Event()
            ready.record(self.stream)
        self.events[k] = ready
        return inputs, targets, ready


class ValLoader:
    """One sequential pass over the validation windows; rank r reads samples r, r + W, r + 2W, ...

    The sample count is truncated to a multiple of W (at most W - 1 windows dropped) so every rank
    yields the same number of batches of the same shapes; the last batch may be smaller than B.
    """

    def __init__(self, dataset: WindowDataset, *, micro_batch_size: int, rank: int, world_size: int,
                 device: torch.device):
        self.dataset = dataset
        self.device = torch.device(device)
        self.micro_batch_size = micro_batch_size
        check_val_windows(dataset, world_size)
        usable = dataset.num_samples // world_size * world_size
        self.indices = np.arange(rank, usable, world_size, dtype=np.int64)  # this rank's slice
        self.num_samples = len(self.indices)
        self.stage_dtype, self.mask = stage_dtype(dataset.files[0].token_width, self.device)

    def __len__(self) -> int:
        return -(-self.num_samples // self.micro_batch_size)

    def __iter__(self):
        pin = self.device.type == "cuda"
        for start in range(0, self.num_samples, self.micro_batch_size):
            idx = self.indices[start:start + self.micro_batch_size]
            host = torch.empty((len(idx), self.dataset.seq_len + 1), dtype=self.stage_dtype, pin_memory=pin)
            self.dataset.gather(idx, 0, out=_staging_view(host, self.dataset.dtype))
            yield widen(host.to(self.device, non_blocking=pin), self.mask)


def check_val_windows(dataset: WindowDataset, world_size: int) -> None:
    """Every rank needs at least one validation window (checked by setup before the process group)."""
    if dataset.num_samples < world_size:
        raise WindowError(f"$.data.val: {dataset.num_samples} validation windows of {dataset.seq_len + 1} "
                          f"tokens for {world_size} ranks; every rank needs at least one")


def _resolve(device) -> torch.device:
    """'cuda' without an index means the caller's current device; pin it before threads start."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _dataset(paths: list[str], key: str, seq_len: int, cfg, weights=None) -> WindowDataset:
    return WindowDataset(pbin_paths(paths, key), seq_len, reuse_last_target=cfg.reuse_last_target,
                         weights=weights, seed=cfg.seed, config_key=key)


def build_train_loader(cfg, *, seq_len: int, micro_batch_size: int, rank: int, world_size: int,
                       device: torch.device, dataset: WindowDataset | None = None) -> TrainLoader:
    """The training loader of one rank from the `[data]` section (a DataConfig); `dataset`: the
    train windows already opened from it (None: opened here)."""
    if not cfg.train:
        raise WindowError("$.data.train is empty: list at least one .pbin file")
    if dataset is None:
        dataset = _dataset(cfg.train, "$.data.train", seq_len, cfg, cfg.train_weights)
    sampler = ResumableDistributedSampler(
        dataset.num_samples, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size,
        seed=cfg.seed, shuffle=cfg.shuffle, source="$.data.train (" + ", ".join(cfg.train) + ")")
    return TrainLoader(dataset, sampler, device, cfg.prefetch)


def build_val_loader(cfg, *, seq_len: int, micro_batch_size: int, rank: int, world_size: int,
                     device: torch.device, dataset: WindowDataset | None = None) -> ValLoader | None:
    """One pass over all of cfg.val (files concatenated, no shuffle), or None without val files;
    `dataset`: the val windows already opened from it (None: opened here)."""
    if not cfg.val:
        return None
    if dataset is None:
        dataset = _dataset(cfg.val, "$.data.val", seq_len, cfg)
    return ValLoader(dataset, micro_batch_size=micro_batch_size, rank=rank, world_size=world_size,
                     device=device)
