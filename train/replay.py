"""``ReplayLoader``: stage two's data path for any training loop (timm's train.py, Lightning, your own).

It yields exactly what ``relabel train`` trains on: the same views, mix pairs, batch order and
labels, for one rank of a DDP job. Labels never pass through the DataLoader workers: each epoch's
views are read once (a few MB for ImageNet) and each batch's rows are gathered by store position.
"""
from __future__ import annotations

import operator
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from relabel.models import Normalize
from relabel.settings import check_value, default_of
from relabel.storage.errors import ConfigError, named

from .config import DEFAULTS, TrainConfig
from .data import EpochBatchSampler, TrainData, finish_pixels


class ReplayLoader:
    """Batches of replayed views with their cached soft labels.

    Args:
        data: the training images: an ImageFolder tree or webdataset shards (local or any fsspec URL).
        labels: a label store or exported shards (a path/URL, or what ``relabel.open_labels`` returned).
        batch_size: samples per batch on this rank; even when the recipe mixes (pairs share a batch).
        seed: the run's seed: which stored view each epoch replays and the batch order.
        workers: DataLoader worker processes (decode, render, mix); default: ``relabel train``'s.
        rank, world: this process's place in a DDP job (default: ``RANK``/``WORLD_SIZE`` from the
            environment, else 0 of 1); ranks get disjoint samples and equal batch counts.
        normalize_for: a timm model (or its name) whose own mean/std ``b["input"]`` is normalized
            with; None leaves only the uint8 ``b["pixels"]``.
        allow_subset: train on the images that have labels when DATA is not the labelled dataset.
        img_size: render size (default: the size the teacher saw).
        views_limit: replay only the first V stored views.
        aug_repeats: repeated augmentation, each epoch about N/R samples x R different views.
        device: move batches there (non-blocking, from pinned memory on CUDA); the torch renderer
            renders them there.
        renderer: ``pillow`` (render in the workers), ``torch`` (workers decode and cut the crop's
            region; the views render on ``device`` after the DataLoader) or ``auto`` (torch on CUDA).
            Both give the same bytes.
        render_kernel: the torch renderer's resize kernel: ``auto`` (timed on the device's first
            batches, the fastest kept), ``matmul`` or ``taps``; the same bytes with each.
        allow_pixel_drift: replay even when this machine renders the store's canonical views
            differently than stage one did (otherwise a RelabelError names what differs).

    Each batch is a dict: ``pixels`` uint8 (B, 3, H, W) (channels_last memory), ``topk_index`` int64
    (B, k), ``topk_logp`` float32 (B, k+1) (top-k log-probs under the full softmax, then the log of
    the rest mass; feed them to ``relabel.kd_loss``), ``y`` / ``y_partner`` / ``lam`` (mixed ground
    truth for ``relabel.mixed_ce``, in the teacher's class space), ``partner``, ``positions`` (store
    positions), ``view`` (per sample); and ``input`` when ``normalize_for`` is given.

    Raises:
        relabel.RelabelError: labels of another dataset (without ``allow_subset``), an incomplete
            or damaged store, an odd batch for a mixing recipe, too many aug repeats.

    Example::

        loader = relabel.ReplayLoader("/data/train", "labels.zarr", batch_size=128, normalize_for=model)
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for b in loader:
                loss = relabel.kd_loss(model(b["input"]), b["topk_index"], b["topk_logp"]).mean()
    """

    def __init__(self, data: str, labels, batch_size: int, *, seed: int = default_of(TrainConfig, "seed"),
                 workers: int | None = None, rank: int | None = None, world: int | None = None, normalize_for=None,
                 allow_subset: bool = False, img_size: int | None = None, views_limit: int | None = None,
                 aug_repeats: int = DEFAULTS["aug_repeats"], device: str | torch.device | None = None,
                 allow_pixel_drift: bool = False, renderer: str = default_of(TrainConfig, "renderer"),
                 render_kernel: str = default_of(TrainConfig, "render_kernel")):
        if workers is None:  # relabel train's default (relabel.runtime.default_workers)
            workers = default_of(TrainConfig, "workers")
        # Each setting is checked by its TrainConfig field's limits, as `relabel train` checks it.
        batch_size, seed, workers, aug_repeats, img_size, views_limit, renderer = (
            check_value(TrainConfig, name, value) for name, value in (
                ("batch_size", batch_size), ("seed", seed), ("workers", workers), ("aug_repeats", aug_repeats),
                ("img_size", img_size), ("views_limit", views_limit), ("renderer", renderer)))
        allow_subset = check_value(TrainConfig, "allow_subset", allow_subset)
        allow_pixel_drift = check_value(TrainConfig, "allow_pixel_drift", allow_pixel_drift)
        render_kernel = check_value(TrainConfig, "render_kernel", render_kernel)
        if device is not None:
            device = check_value(TrainConfig, "device", str(device) if isinstance(device, torch.device) else device)
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            _require_cuda(device)
        labels = getattr(labels, "path", labels)  # an opened store: replay reads it by path
        dev = torch.device(device) if device is not None else None
        td = TrainData(data, str(labels), allow_subset=allow_subset, img_size=img_size, views_limit=views_limit,
                       repeats=aug_repeats, allow_drift=allow_pixel_drift, renderer=renderer, device=dev,
                       render_kernel=render_kernel)
        self._setup(td, batch_size, seed=seed, workers=workers, rank=rank, world=world, device=dev,
                    normalize_for=normalize_for, with_labels=True)

    @classmethod
    def for_data(cls, data: TrainData, batch_size: int, *, seed: int, workers: int, rank: int = 0, world: int = 1,
                 device: torch.device | None = None, with_labels: bool = True) -> "ReplayLoader":
        """The loader of an already matched ``TrainData`` (``relabel train`` builds its data once and
        trains from this; ``with_labels=False`` for supervised and online runs, or no store)."""
        self = cls.__new__(cls)
        self._setup(data, batch_size, seed=seed, workers=workers, rank=rank, world=world, device=device,
                    normalize_for=None, with_labels=with_labels)
        return self

    def _setup(self, data: TrainData, batch_size: int, *, seed: int, workers: int, rank, world, device,
               normalize_for, with_labels: bool) -> None:
        _require_cuda(device)
        self.data, self.device, self.with_labels = data, device, with_labels
        self.data.batches(seed, 0, batch_size)  # an odd batch for a mixing recipe fails here, not mid-epoch
        try:
            self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
            self.world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
        except ValueError:
            raise ConfigError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} in the "
                              f"environment are not whole numbers; fix them or pass rank= and world=") from None
        self.rank, self.world = _whole(self.rank), _whole(self.world)
        if self.rank is None or self.world is None or not (self.world >= 1 and 0 <= self.rank < self.world):
            raise ConfigError(f"{named('rank')} {rank!r} of {named('world')} {world!r}: need whole numbers with "
                              f"0 <= rank < world")
        self.sampler = EpochBatchSampler(self.data, seed, batch_size, self.rank, self.world)
        if len(self.sampler) == 0:  # a loop over no batches would fail far from here (loss.item() of nothing)
            raise ConfigError(f"{named('batch_size', batch_size)} x {self.world} process(es) is more than the "
                              f"{self.data.matched} usable samples; use a smaller batch")
        self._seed, self._workers, self._live = seed, workers, 0
        self.loader = self._make_loader(persistent=workers > 0)
        self.normalize = None
        if normalize_for is not None:
            cfg = _pretrained_cfg(normalize_for)
            self.normalize = Normalize(cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))
            if self.device is not None:
                self.normalize = self.normalize.to(self.device)
        self._label_views: tuple[int, ...] = ()
        self._rows: tuple[torch.Tensor, torch.Tensor] | None = None
        self._slot = self._slot_cpu = torch.zeros(0, dtype=torch.int64)
        self.set_epoch(0)

    def _make_loader(self, persistent: bool) -> DataLoader:
        gpu = self.device is not None and self.device.type == "cuda"
        w = self._workers
        return DataLoader(self.data.dataset(), batch_sampler=self.sampler, collate_fn=self.data.collate(),
                          num_workers=w, pin_memory=gpu, persistent_workers=persistent and w > 0,
                          prefetch_factor=4 if w else None,
                          generator=torch.Generator().manual_seed(self._seed))  # keeps the global RNG untouched

    @property
    def header(self):
        return self.data.header

    @property
    def num_classes(self) -> int:
        """The student's output size: the teacher's classes (the store's class map, if any, applied)."""
        return self.data.header.num_classes

    @property
    def epoch_views(self) -> list[int]:
        return list(self.sampler.views)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch's views and batches and read those views' labels (once per epoch)."""
        self.sampler.set_epoch(epoch)
        if self.with_labels:
            self._load_labels()

    def _load_labels(self) -> None:
        """Every sample's row of each of the epoch's views, on the loader's device (a few MB a view
        for ImageNet): batches gather by (view, store position) there, never in the workers."""
        views = tuple(int(v) for v in self.sampler.views)
        if views == self._label_views:
            return
        rows = [self.data.store.read_view(v) for v in views]
        dev = self.device or torch.device("cpu")
        self._rows = (torch.from_numpy(np.stack([r[0] for r in rows])).to(dev),
                      torch.from_numpy(np.stack([r[1] for r in rows])).to(dev))
        slot = torch.full((max(views) + 1,), -1, dtype=torch.int64)
        slot[list(views)] = torch.arange(len(views))
        self._slot, self._slot_cpu, self._label_views = slot.to(dev), slot, views

    def __len__(self) -> int:
        return len(self.sampler)

    def _device_stage(self, b: dict, labels) -> dict:
        """Render the batch's views, move it to the device and gather its labels there. ``labels``:
        (rows, slot on the device, slot on the CPU) of the epoch this iterator was started in."""
        finish_pixels(self.data.renderer, b, self.device)  # the renderer's device stage
        b["view"] = b["views"]  # a view per sample (repeated augmentation mixes views)
        if labels is not None:
            rows, slot, slot_cpu = labels
            views = b["views"]
            if int(views.max()) >= len(slot_cpu) or bool((slot_cpu[views] < 0).any()):
                raise RuntimeError("a ReplayLoader iterator outlived its epoch (set_epoch was called while it "
                                   "was being read); start a new iteration after set_epoch")
        if self.device is not None:
            b = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}
        if labels is not None:
            s = slot[b["views"].to(slot.device)]
            pos = b["positions"].to(slot.device)
            b["topk_index"], b["topk_logp"] = rows[0][s, pos], rows[1][s, pos]
        if self.normalize is not None:
            b["input"] = self.normalize(b["pixels"])
        return b

    def __iter__(self):
        """Every iterator is a whole pass of its own over the epoch's batches. On CUDA the next batch's
        upload, render and label gather run on a side stream while the caller's step for this batch
        runs (timm's PrefetchLoader, one batch ahead).

        The persistent workers serve one pass at a time: a second iterator taken while one is being
        read (a peek inside the training loop, two interleaved passes) gets workers of its own, so
        neither ever sees the other's batches."""
        from relabel.views import prefetch_on_device

        labels = (self._rows, self._slot, self._slot_cpu) if self.with_labels else None  # this epoch's, kept
        loader = self.loader if self._live == 0 else self._make_loader(persistent=False)
        self._live += 1
        try:
            yield from prefetch_on_device(loader, lambda b: self._device_stage(b, labels), self.device)
        finally:
            self._live -= 1


def _whole(x) -> int | None:
    """A whole number (Python or numpy int) as an int; None for anything else (bools, floats, text)."""
    if isinstance(x, bool):
        return None
    try:
        return int(operator.index(x))
    except TypeError:
        return None


def _require_cuda(device) -> None:
    """A CUDA device asked for on a machine without one: one line, before anything touches CUDA."""
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{named('device', str(device))} asked for but no CUDA GPU is visible; use "
                          f"{named('device', 'cpu')} or leave it out")


def _pretrained_cfg(model) -> dict:
    """A timm model's (or model name's) pretrained_cfg: where its mean and std live."""
    if isinstance(model, str):
        from timm.models import get_pretrained_cfg

        from relabel.models import resolve_name

        cfg = get_pretrained_cfg(resolve_name(model))
        return {} if cfg is None else {"mean": cfg.mean, "std": cfg.std}
    return dict(getattr(model, "pretrained_cfg", None) or {})
