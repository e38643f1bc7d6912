"""Replaying stored views for training: which views an epoch uses, batches that keep mix pairs
together, and workers that decode each image once, render its view and mix pairs as stage one did.

Labels never pass through workers: the trainer reads the epoch's views of every sample
(``LabelStore.read_view``) and gathers rows by the batch's (view, store position).

Repeated augmentation (``repeats`` R > 1, USI's ``--aug-repeats``): an epoch keeps about N/R samples
and shows each with R different views. Samples are kept in whole mix groups (the fixed blocks of
``recipe.mix_group`` store positions inside which every view pairs its samples), so every view's
mix partner of a kept sample is kept too and each pair is mixed exactly as stage one mixed it. The
kept groups are dealt to the ranks, so ranks see disjoint samples.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from relabel.views import replay_check
from relabel.views.rules import check_rule, native_rule
from relabel.rng import CounterRNG
from relabel.views import (Recipe, Renderer, ViewRenderer, create_recipe, create_renderer, decode_image, mix_params,
                           pairs_for_view, plan_batch, store_order)
from relabel.storage import StoreHeader, open_source
from relabel.storage.errors import ConfigError, SourceError, StoreError, named
from relabel.storage.labels import open_labels
from relabel.storage.sources import ImageSource
from relabel.storage.store import DIGEST_BYTES, STATUS_OK

log = logging.getLogger(__name__)

Item = tuple[int, int, int]  # (store position, view, partner position or -1)


def view_for_epoch(seed: int, views: int, epoch: int) -> int:
    """Epoch e replays view v(e) of every sample: a seeded permutation of range(views) per pass."""
    rnd, i = divmod(epoch, views)
    return CounterRNG("train-views", seed, views, rnd).permutation(views)[i]


def views_for_epoch(seed: int, views: int, epoch: int, repeats: int) -> list[int]:
    """The R distinct stored views an epoch shows (R = 1: ``view_for_epoch``)."""
    if repeats == 1:
        return [view_for_epoch(seed, views, epoch)]
    return [int(v) for v in CounterRNG("train-repeat-views", seed, views, epoch).permutation(views)[:repeats]]


class ViewPlan:
    """The views of a dataset that has no label store: what supervised training from scratch (a
    teacher, say) replays. It answers the parts of LabelStore that TrainData asks, all samples ok."""

    def __init__(self, source: ImageSource, recipe: str, seed: int, views: int, img_size: int):
        r = create_recipe(recipe)
        self.header = StoreHeader(num_samples=len(source), views=views, topk=1, num_classes=len(source.class_names),
                                  class_names=list(source.class_names), fingerprint=source.fingerprint,
                                  teacher={}, recipe=r.to_dict(), seed=seed, img_size=img_size,
                                  render_rules={"resize": native_rule()})
        self.keys = store_order(source.keys, seed)
        self.complete = True

    def status(self) -> np.ndarray:
        return np.full(self.header.num_samples, STATUS_OK, np.uint8)


class TrainData:
    """DATA matched to the label store by key: who can be trained on, and each epoch's batches.

    With ``labels=None`` (supervised only) the views come from a ViewPlan instead of a store.
    """

    def __init__(self, data: str, labels: str | None, allow_subset: bool = False, img_size: int | None = None,
                 plan: dict | None = None, views_limit: int | None = None, repeats: int = 1, fresh: bool = False,
                 allow_drift: bool = False, renderer: str = "auto", device: torch.device | str | None = None,
                 render_kernel: str = "auto"):
        if labels:  # the store first: its key rule says how DATA's names become its keys
            self.store = open_labels(labels)
            self.source: ImageSource = open_source(data, self.store.header.key_rule)
        else:
            self.source = open_source(data)
            self.store = ViewPlan(self.source, img_size=img_size or 224, **plan)
        h = self.header = self.store.header
        self.repeats, self.fresh = repeats, fresh
        # A pull of a range of views holds views [lo, hi) only; every other store all of them.
        self.view_lo, hi = getattr(self.store, "held_views", (0, h.views))
        held = hi - self.view_lo
        if views_limit is not None and not 1 <= views_limit <= held:
            raise ConfigError(f"{named('views_limit', views_limit)}: {labels} holds {held} view(s) per sample; "
                            f"use 1 to {held}")
        self.views = views_limit or held  # stored views this run replays: the first `views` held
        if repeats > self.views and not fresh:
            raise ConfigError(f"{named('aug_repeats', repeats)} shows each kept sample with {repeats} different "
                            f"views, but {named('views_limit') + ' leaves' if views_limit else f'{labels} holds'} "
                            f"{self.views} per sample; use {named('aug_repeats', self.views)} or less, or generate "
                            f"more views")
        self.recipe: Recipe = create_recipe(h.recipe)
        self.img_size = img_size or h.img_size
        # Workers plan (Pillow: render); the main process finishes each batch on `device`.
        spec = ViewRenderer.of_store(h, self.img_size, allow_drift) if labels else ViewRenderer(
            self.recipe, h.seed, self.img_size, check_rule(h.resize_rule))
        self.renderer: Renderer = create_renderer(renderer, spec, device, render_kernel)
        self.device = device
        if not self.store.complete:
            raise StoreError(f"{labels}: the label store is incomplete ({len(self.store.pending_shards())} shard(s) "
                            f"pending); finish 'relabel generate' first")
        require_sealed = getattr(self.store, "require_sealed", None)
        if require_sealed is not None:  # every shard's seal before the first step, not when its block comes up
            require_sealed()
        index = self.source.index()
        self.src_index = np.asarray([index.get(k, -1) for k in self.store.keys], np.int64)
        self.present = self.src_index >= 0
        fingerprint = self.source.fingerprint_for(h.schema_version)
        if fingerprint == h.fingerprint and not self.present.all():  # same dataset, other keys
            first = self.store.keys[int(np.argmin(self.present))]
            raise StoreError(f"{labels}: {int((~self.present).sum())} of the store's keys (first: {first!r}) are not in "
                             f"DATA although DATA is the dataset the labels were made for: the keys array was edited; "
                             f"rerun generate {named('repair', True)} to rebuild it")
        self.status_ok = self.store.status() == STATUS_OK
        self.usable = self.present & self.status_ok
        self.matched, self.total = int(self.usable.sum()), h.num_samples
        if fingerprint != h.fingerprint:
            if list(self.source.class_names) != list(h.class_names):
                raise StoreError(f"{labels}: labels were made for other classes ({len(h.class_names)} in the store, "
                                f"{len(self.source.class_names)} in {data}); use the labels of this dataset")
            if not allow_subset:
                raise StoreError(f"{labels}: labels were made for another dataset (fingerprint {h.fingerprint[:12]} vs "
                                f"{fingerprint[:12]} for {data}): {int(self.present.sum())} of the store's "
                                f"{h.num_samples} keys are in DATA, which has {len(self.source)} images; "
                                f"set {named('allow_subset', True)} to train on the matched ones")
        if self.matched == 0:
            raise StoreError(f"{data}: no image has usable labels in {labels}")
        if labels is not None:
            self._check_drift(allow_drift)
        # Ground truth in the teacher's index space: the store's class map (dataset class -> teacher
        # class) when the teacher has other classes than the folders, else the dataset's own indices.
        # (StoreHeader checked the map when the store was opened: length, range, no duplicates.)
        self.class_map = None if h.class_map is None else np.asarray(h.class_map, np.int64)
        gt = np.full(h.num_samples, -1, np.int64)
        own = np.asarray(self.source.labels)[self.src_index[self.present]]
        stored = self.store.sample_classes() if hasattr(self.store, "sample_classes") else None
        if stored is not None:  # a key filed under another class in this copy: its labels are not for it
            moved = (stored[self.present] >= 0) & (stored[self.present] != own)
            if moved.any():
                i = int(np.nonzero(self.present)[0][np.argmax(moved)])
                raise StoreError(f"{data}: {int(moved.sum())} image(s) (first: {self.store.keys[i]!r}) are filed under "
                                 f"another class than the labels were made for ({h.class_names[stored[i]]!r} in the "
                                 f"store, {self.source.class_names[own[np.argmax(moved)]]!r} here); use the copy of "
                                 f"the images the labels were made from")
        gt[self.present] = h.teacher_class(own)
        self.gt = gt
        # The bytes each sample was labelled from (schema 4): every read in stage two is checked against them.
        digests = self.store.sample_digests() if hasattr(self.store, "sample_digests") else None
        self.digests = None if digests is None or not digests.any() else digests

    def _check_drift(self, allow: bool) -> None:
        """Render the header's canonical views here: pixels the teacher never saw are not trained on."""
        h, index = self.header, self.source.index()
        at_store_size = type(self.renderer)(self.renderer.spec.at(h.img_size),  # what was recorded
                                            kernel=self.renderer.kernel)
        drift = replay_check.check(h.replay_check, at_store_size, lambda k: self.source.read(index[k]),
                                   lambda k: k in index, device=self.device)
        if drift and not allow:
            raise StoreError(f"{drift.message()}; the cached labels would not match what the student sees. Use the "
                             f"machine/Pillow the labels were made with, regenerate, or set "
                             f"{named('allow_pixel_drift', True)}")
        if drift:
            log.warning("warning: %s (training anyway: %s)", drift.message(), named("allow_pixel_drift", True))

    def epoch_views(self, seed: int, epoch: int) -> list[int]:
        """The views epoch ``epoch`` shows: R distinct stored ones, or with ``fresh`` R views that
        were never stored (indices after the store's; a view is a pure function of its index)."""
        R = self.repeats
        if self.fresh:
            return [self.header.views + epoch * R + i for i in range(R)]
        if R > 1 and isinstance(self.store, ViewPlan):  # no store: every epoch R new views
            return [epoch * R + i for i in range(R)]
        return [self.view_lo + v for v in views_for_epoch(seed, self.views, epoch, R)]

    def _units(self, v: int, allowed: np.ndarray | None, rng: CounterRNG) -> tuple[np.ndarray, int | None, np.ndarray]:
        """Under view v, over the allowed positions: (units (U, 2) = mix pairs or two unpaired
        samples, singles shuffled by ``rng``; a last unpaired sample or None; partner per position or -1).

        A sample whose partner was labelled (status OK) but is absent from DATA is skipped when stage
        one mixed the two: its label is for an image that cannot be rebuilt. ``allowed`` must be
        closed under the view's pairs (whole mix groups).
        """
        partner = pairs_for_view(self.recipe, self.header.seed, v, self.header.num_samples)
        q = np.where(partner >= 0, partner, 0)
        has = partner >= 0
        orphan = self.usable & has & self.status_ok[q] & ~self.present[q]
        for p in np.nonzero(orphan)[0]:  # a pair that was never mixed (mix_prob < 1) can be replayed alone
            if mix_params(self.recipe, self.header.seed, v, int(min(p, q[p]))) is None:
                orphan[p] = False
        keep = self.usable & ~orphan
        if allowed is not None:
            keep &= allowed
        paired = keep & has & keep[q]
        singles = np.nonzero(keep & ~paired)[0]
        singles = singles[np.asarray(rng.permutation(len(singles)), np.int64)]
        firsts = np.nonzero(paired & (np.arange(len(partner)) < partner))[0]
        n2 = len(singles) // 2 * 2
        units = np.concatenate([np.stack([firsts, partner[firsts]], 1).reshape(-1, 2),
                                singles[:n2].reshape(-1, 2)]).astype(np.int64)
        lone = int(singles[-1]) if len(singles) % 2 else None
        return units, lone, np.where(paired, partner, -1)

    def order(self, seed: int, epoch: int) -> tuple[int, list[int], np.ndarray]:
        """One view (R = 1): (view, every usable position in this epoch's order, partner per position or -1).

        Units are mix pairs, or two unpaired samples, shuffled; with an even batch size no pair
        straddles two batches.
        """
        v = self.epoch_views(seed, epoch)[0]
        rng = CounterRNG("train-order", seed, epoch)
        units, lone, partner = self._units(v, None, rng)
        flat = units[np.asarray(rng.permutation(len(units)), np.int64)].reshape(-1).tolist()
        if lone is not None:
            flat.append(lone)
        return v, flat, partner

    def repeat_items(self, seed: int, epoch: int, world: int = 1) -> list[list[Item]]:
        """R > 1: every rank's items of this epoch, each kept sample once per view (see the module doc).

        About N/R samples are kept, in whole mix groups dealt to the ranks in turn. Each rank's pair
        units of all R views are shuffled together; the (at most R) lone unpaired samples go last,
        so with an even batch size no pair straddles two batches. A batch may hold several views:
        the collate mixes each view's pairs with that view's parameters.
        """
        views, N, G = self.epoch_views(seed, epoch), self.header.num_samples, self.recipe.mix_group
        n_groups = -(-N // G)
        if n_groups < world:
            raise ConfigError(f"{named('aug_repeats', self.repeats)} keeps whole mix groups of {G} samples and deals "
                            f"them to the {world} processes, but the store has only {n_groups} group(s); "
                            f"use {named('aug_repeats', 1)} or fewer processes")
        groups = np.asarray(CounterRNG("train-repeat", seed, epoch).permutation(n_groups), np.int64)
        kept = groups[:max(world, round(n_groups / self.repeats))]
        out = []
        for rank in range(world):
            allowed = np.zeros(N, bool)
            for g in kept[rank::world]:
                allowed[g * G:(g + 1) * G] = True
            rng = CounterRNG("train-repeat-units", seed, epoch, rank, world)
            units, lones = [], []
            for v in views:
                u, lone, partner = self._units(v, allowed, rng)
                units += [((int(a), v, int(partner[a])), (int(b), v, int(partner[b]))) for a, b in u]
                if lone is not None:
                    lones.append((lone, v, -1))
            out.append([it for i in rng.permutation(len(units)) for it in units[i]] + lones)
        return out

    def batches(self, seed: int, epoch: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[Item]]:
        """This rank's batches of (position, view, partner): equal count on every rank, remainder dropped."""
        if self.recipe.mixes and batch_size % 2:
            raise ConfigError(f"{named('batch_size')} must be even: recipe {self.recipe.name!r} mixes pairs of samples "
                            f"that must share a batch (got {batch_size})")
        if self.repeats > 1:
            per_rank = self.repeat_items(seed, epoch, world)
            n = min(len(x) for x in per_rank) // batch_size * batch_size
            mine = per_rank[rank][:n]
            return [mine[i:i + batch_size] for i in range(0, n, batch_size)]
        v, flat, partner = self.order(seed, epoch)
        n = len(flat) // batch_size // world * world * batch_size
        items = [(p, v, int(partner[p])) for p in flat[:n]]
        return [items[i:i + batch_size] for i in range(0, n, batch_size)][rank::world]

    def dataset(self) -> "ViewDataset":
        return ViewDataset(self.source, self.src_index, self.store.keys, self.renderer, self.digests)

    def collate(self) -> "MixCollate":
        return MixCollate(self.renderer, self.gt)


class EpochBatchSampler:
    """Yields one rank's batches of (position, view, partner) for the epoch set by ``set_epoch``.

    Runs in the main process, so persistent workers need no epoch state: the view rides along.
    """

    def __init__(self, data: TrainData, seed: int, batch_size: int, rank: int = 0, world: int = 1):
        self.data, self.seed, self.batch_size, self.rank, self.world = data, seed, batch_size, rank, world
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.views = self.data.epoch_views(self.seed, epoch)
        self.view = self.views[0]
        self._batches = self.data.batches(self.seed, epoch, self.batch_size, self.rank, self.world)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self):
        return iter(self._batches)


class ViewDataset(Dataset):
    """Item (position, view, partner) -> (position, view, partner, the renderer's plan); one decode.

    ``digests`` (N, 16), when the store recorded them: each image's bytes are checked against the
    bytes its labels were made from before it is decoded (another image under the same name is
    refused, naming it, never trained on)."""

    def __init__(self, source: ImageSource, src_index: np.ndarray, keys: list[str], renderer: Renderer,
                 digests: np.ndarray | None = None):
        self.source, self.src_index, self.keys, self.renderer = source, src_index, keys, renderer
        self.digests = digests

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item: Item):
        p, v, q = item
        data = self.source.read(int(self.src_index[p]))
        if self.digests is not None and self.digests[p].any():
            got = hashlib.sha256(data).digest()[:DIGEST_BYTES]
            if got != self.digests[p].tobytes():
                raise SourceError(f"{self.source.root}: image {self.keys[p]!r} is not the image its labels were made "
                                  f"from (its bytes differ); use the copy of the images the labels were made from, "
                                  f"or run 'relabel verify' to list every changed image")
        img = decode_image(data)
        return p, v, q, self.renderer.plan(self.keys[p], v, img)


@dataclass
class MixCollate:
    """A batch's plans -> the renderer's payload, its pairs mixed exactly as stage one mixed them
    (``plan_batch``, per view); ``finish_pixels`` turns the payload into pixels after the loader."""

    renderer: Renderer
    gt: np.ndarray  # ground-truth class per store position

    def __call__(self, items) -> dict:
        pos = [it[0] for it in items]
        views = [it[1] for it in items]
        payload, lam, other = plan_batch(self.renderer, pos, views, [it[2] for it in items], [it[3] for it in items])
        pos_t = torch.as_tensor(pos, dtype=torch.int64)
        other_t = torch.as_tensor(other, dtype=torch.int64)
        y = torch.from_numpy(self.gt[pos_t.numpy()])
        return {
            "render": payload,
            "positions": pos_t,
            "y": y,
            "lam": torch.as_tensor(lam, dtype=torch.float32),
            "partner": other_t,
            "y_partner": torch.where(other_t >= 0, torch.from_numpy(self.gt[other_t.clamp(min=0).numpy()]), y),
            "views": torch.as_tensor(views, dtype=torch.int64),
        }


def finish_pixels(renderer: Renderer, batch: dict, device) -> dict:
    """Main-process stage after the DataLoader: the batch's ``render`` payload becomes ``pixels``,
    uint8 (B, 3, H, W) in channels_last memory, on ``device``."""
    from relabel.views import finish_batch

    batch["pixels"] = finish_batch(renderer, batch.pop("render"), device).permute(0, 3, 1, 2)
    return batch
