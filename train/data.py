"""Replaying stored views for training: which view an epoch uses, batches that keep mix pairs
together, and workers that decode each image once, render its view and mix pairs as stage one did.

Labels never pass through workers: the trainer reads one view of every sample per epoch
(``LabelStore.read_view``) and gathers rows by the batch's store positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from relabel.rng import CounterRNG
from relabel.views import (Recipe, ViewRenderer, create_recipe, decode_image, mix_batch, mix_params, pairs_for_view,
                           store_order)
from relabel.storage import StoreHeader, UserError, open_source
from relabel.storage.export import open_labels
from relabel.storage.sources import ImageSource
from relabel.storage.store import STATUS_OK

Item = tuple[int, int, int]  # (store position, view, partner position or -1)


def view_for_epoch(seed: int, views: int, epoch: int) -> int:
    """Epoch e replays view v(e) of every sample: a seeded permutation of range(views) per pass."""
    rnd, i = divmod(epoch, views)
    return CounterRNG("train-views", seed, views, rnd).permutation(views)[i]


class ViewPlan:
    """The views of a dataset that has no label store: what supervised training from scratch (a
    teacher, say) replays. It answers the parts of LabelStore that TrainData asks, all samples ok."""

    def __init__(self, source: ImageSource, recipe: str, seed: int, views: int, img_size: int):
        r = create_recipe(recipe)
        self.header = StoreHeader(num_samples=len(source), views=views, topk=1, num_classes=len(source.class_names),
                                  class_names=list(source.class_names), fingerprint=source.fingerprint,
                                  teacher={}, recipe=r.to_dict(), seed=seed, img_size=img_size)
        self.keys = store_order(source.keys, seed)
        self.complete = True

    def status(self) -> np.ndarray:
        return np.full(self.header.num_samples, STATUS_OK, np.uint8)


class TrainData:
    """DATA matched to the label store by key: who can be trained on, and each epoch's batches.

    With ``labels=None`` (supervised only) the views come from a ViewPlan instead of a store.
    """

    def __init__(self, data: str, labels: str | None, allow_subset: bool = False, img_size: int | None = None,
                 plan: dict | None = None):
        self.source: ImageSource = open_source(data)
        self.store = open_labels(labels) if labels else ViewPlan(self.source, img_size=img_size or 224, **plan)
        h = self.header = self.store.header
        self.recipe: Recipe = create_recipe(h.recipe)
        self.img_size = img_size or h.img_size
        if not self.store.complete:
            raise UserError(f"{labels}: the label store is incomplete ({len(self.store.pending_shards())} shard(s) "
                            f"pending); finish 'relabel generate' first")
        index = self.source.index()
        self.src_index = np.asarray([index.get(k, -1) for k in self.store.keys], np.int64)
        self.present = self.src_index >= 0
        self.status_ok = self.store.status() == STATUS_OK
        self.usable = self.present & self.status_ok
        self.matched, self.total = int(self.usable.sum()), h.num_samples
        if self.source.fingerprint != h.fingerprint:
            if list(self.source.class_names) != list(h.class_names):
                raise UserError(f"{labels}: labels were made for other classes ({len(h.class_names)} in the store, "
                                f"{len(self.source.class_names)} in {data}); use the labels of this dataset")
            if not allow_subset:
                raise UserError(f"{labels}: labels were made for another dataset (fingerprint {h.fingerprint[:12]} vs "
                                f"{self.source.fingerprint[:12]} for {data}): {int(self.present.sum())} of the store's "
                                f"{h.num_samples} keys are in DATA, which has {len(self.source)} images; "
                                f"pass --allow-subset to train on the matched ones")
        if self.matched == 0:
            raise UserError(f"{data}: no image has usable labels in {labels}")
        gt = np.full(h.num_samples, -1, np.int64)
        gt[self.present] = self.source.labels[self.src_index[self.present]]
        self.gt = gt

    def order(self, seed: int, epoch: int) -> tuple[int, list[int], np.ndarray]:
        """(view, every usable position in this epoch's order, partner per position or -1).

        Units are mix pairs, or two unpaired samples, shuffled; with an even batch size no pair
        straddles two batches. A sample whose partner was labelled (status OK) but is absent from
        DATA is skipped when stage one mixed the two: its label is for an image that cannot be rebuilt.
        """
        v = view_for_epoch(seed, self.header.views, epoch)
        partner = pairs_for_view(self.recipe, self.header.seed, v, self.header.num_samples)
        q = np.where(partner >= 0, partner, 0)
        has = partner >= 0
        orphan = self.usable & has & self.status_ok[q] & ~self.present[q]
        for p in np.nonzero(orphan)[0]:  # a pair that was never mixed (mix_prob < 1) can be replayed alone
            if mix_params(self.recipe, self.header.seed, v, int(min(p, q[p]))) is None:
                orphan[p] = False
        keep = self.usable & ~orphan
        paired = keep & has & keep[q]
        rng = CounterRNG("train-order", seed, epoch)
        singles = np.nonzero(keep & ~paired)[0]
        singles = singles[np.asarray(rng.permutation(len(singles)), np.int64)]
        firsts = np.nonzero(paired & (np.arange(len(partner)) < partner))[0]
        units = [(int(p), int(partner[p])) for p in firsts]
        units += [(int(singles[i]), int(singles[i + 1])) for i in range(0, len(singles) - 1, 2)]
        flat = [p for i in rng.permutation(len(units)) for p in units[i]]
        if len(singles) % 2:
            flat.append(int(singles[-1]))
        return v, flat, np.where(paired, partner, -1)

    def batches(self, seed: int, epoch: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[Item]]:
        """This rank's batches of (position, view, partner): equal count on every rank, remainder dropped."""
        if self.recipe.mixes and batch_size % 2:
            raise UserError(f"--batch-size must be even: recipe {self.recipe.name!r} mixes pairs of samples "
                            f"that must share a batch (got {batch_size})")
        v, flat, partner = self.order(seed, epoch)
        n = len(flat) // batch_size // world * world * batch_size
        items = [(p, v, int(partner[p])) for p in flat[:n]]
        return [items[i:i + batch_size] for i in range(0, n, batch_size)][rank::world]

    def dataset(self) -> "ViewDataset":
        return ViewDataset(self.source, self.src_index, self.store.keys, ViewRenderer(self.recipe, self.header.seed, self.img_size))

    def collate(self) -> "MixCollate":
        return MixCollate(self.recipe, self.header.seed, self.gt)


class EpochBatchSampler:
    """Yields one rank's batches of (position, view, partner) for the epoch set by ``set_epoch``.

    Runs in the main process, so persistent workers need no epoch state: the view rides along.
    """

    def __init__(self, data: TrainData, seed: int, batch_size: int, rank: int = 0, world: int = 1):
        self.data, self.seed, self.batch_size, self.rank, self.world = data, seed, batch_size, rank, world
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.view = view_for_epoch(self.seed, self.data.header.views, epoch)
        self._batches = self.data.batches(self.seed, epoch, self.batch_size, self.rank, self.world)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self):
        return iter(self._batches)


class ViewDataset(Dataset):
    """Item (position, view, partner) -> (position, view, partner, pixels uint8 HWC); one decode."""

    def __init__(self, source: ImageSource, src_index: np.ndarray, keys: list[str], renderer: ViewRenderer):
        self.source, self.src_index, self.keys, self.renderer = source, src_index, keys, renderer

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item: Item):
        p, v, q = item
        img = decode_image(self.source.read(int(self.src_index[p])))
        return p, v, q, self.renderer.render(self.keys[p], v, img)


@dataclass
class MixCollate:
    """Stack a batch and mix the pairs in it exactly as stage one did (``mix_batch``)."""

    recipe: Recipe
    seed: int
    gt: np.ndarray  # ground-truth class per store position

    def __call__(self, items) -> dict:
        pos = [it[0] for it in items]
        view = items[0][1]
        pixels, lam, other = mix_batch(self.recipe, self.seed, view, pos, [it[3] for it in items], [it[2] for it in items])
        pos_t = torch.as_tensor(pos, dtype=torch.int64)
        other_t = torch.as_tensor(other, dtype=torch.int64)
        y = torch.from_numpy(self.gt[pos_t.numpy()])
        return {
            "pixels": torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2),  # NCHW view of NHWC = channels_last
            "positions": pos_t,
            "y": y,
            "lam": torch.as_tensor(lam, dtype=torch.float32),
            "partner": other_t,
            "y_partner": torch.where(other_t >= 0, torch.from_numpy(self.gt[other_t.clamp(min=0).numpy()]), y),
            "view": torch.tensor(view),
        }
