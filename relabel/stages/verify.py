"""``relabel verify``: recompute stored views with the teacher and check the store's integrity."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from relabel.storage import LabelStore, open_source
from relabel.storage.errors import SourceError, StoreError
from relabel.storage.store import STATUS_OK, STATUS_UNREADABLE, ShardDamage

from relabel.settings import config_of_call
from relabel.views import replay_check
from .verify_config import VerifyConfig
from relabel.teacher import rebuild_teacher
from relabel.views import Renderer, ViewRenderer, create_recipe, create_renderer, decode_image, group_partners, render_now

# Recomputation noise on top of the stored rounding, by the precision the labels were made in
# (verify itself recomputes in fp32): batch composition and kernels, plus reduced precision.
# Schema-1 stores recorded "auto" without saying what ran: the loosest tolerance applies.
_TOLERANCE = {"fp32": 2e-3, "fp16": 0.05, "bf16": 0.1, "auto": 0.1}


@dataclass
class VerifyReport:
    checked: int = 0
    top1_agreement: float = 1.0
    max_logp_error: float = 0.0
    mean_kl: float = 0.0
    allowed_error: float = 0.0
    pending_shards: int = 0
    damaged: list = field(default_factory=list)  # ShardDamage records
    notes: list[str] = field(default_factory=list)
    drift: str | None = None  # replayed pixels differ from stage one's (relabel.views.replay_check)
    changed_images: list[str] = field(default_factory=list)  # keys whose bytes differ from what was labelled
    misfiled: list[str] = field(default_factory=list)  # keys filed under another class than they were labelled with

    @property
    def ok(self) -> bool:
        return (not self.damaged and self.pending_shards == 0 and self.max_logp_error <= self.allowed_error
                and self.drift is None and not self.changed_images and not self.misfiled)


def render_stored_views(store: LabelStore, source, positions: np.ndarray, views: np.ndarray,
                        status: np.ndarray, renderer: Renderer | None = None, device=None) -> torch.Tensor:
    """Rebuild the exact pixels the teacher saw for (position, view) pairs, partners included:
    uint8 (N, 3, H, W) on ``device`` (default: the renderer's output stays where it is made)."""
    h = store.header
    recipe = create_recipe(h.recipe)
    renderer = renderer or create_renderer("pillow", ViewRenderer.of_store(h))
    src, G = source.index(), recipe.mix_group
    out = []
    for p, v in zip(positions.tolist(), views.tolist()):
        g0 = p - p % G
        q = int(group_partners(recipe, h.seed, v, g0, min(G, h.num_samples - g0))[p - g0])
        members = [p] + ([q] if q >= 0 and status[q] == STATUS_OK else [])
        samples = [(m, v, q if m == p else p, store.keys[m], decode_image(source.read(src[store.keys[m]])))
                   for m in members]
        out.append(render_now(renderer, samples, device)[0])
    return torch.stack(out).permute(0, 3, 1, 2)


def _tall_samples(store: LabelStore, source, positions: np.ndarray, views: np.ndarray, status: np.ndarray) -> np.ndarray:
    """Per (position, view): whether the sample or its mix partner is taller than 100:1 (image headers only)."""
    import io

    from PIL import Image

    h, index = store.header, source.index()
    recipe, G = create_recipe(h.recipe), create_recipe(h.recipe).mix_group
    sizes: dict[int, tuple[int, int]] = {}

    def tall(p: int) -> bool:
        if p not in sizes:
            with Image.open(io.BytesIO(source.read(index[store.keys[p]]))) as img:
                sizes[p] = img.size
        w, hh = sizes[p]
        return hh > 100 * w

    out = []
    for p, v in zip(positions.tolist(), views.tolist()):
        g0 = p - p % G
        q = int(group_partners(recipe, h.seed, v, g0, min(G, h.num_samples - g0))[p - g0])
        out.append(tall(p) or (q >= 0 and status[q] == STATUS_OK and tall(q)))
    return np.asarray(out, bool)


def check_unreadable(store: LabelStore, source) -> list[ShardDamage]:
    """Written shards that call a sample unreadable although its image decodes here: their "unreadable"
    (sticky across view blocks, and changing its mix partners' views) is no verdict on these images (a
    shard copied from a store whose copy of the image was damaged, an edited status byte)."""
    st, done = store.block_status(), store.done_views()
    h, index, out = store.header, source.index(), []
    for i in np.nonzero((st == STATUS_UNREADABLE).any(0))[0].tolist():
        j = index.get(store.keys[i])
        if j is None:
            continue
        try:
            decode_image(source.read(j))
        except Exception:
            continue  # unreadable here too: the verdict stands
        sb = i // h.samples_per_shard
        for vb in np.nonzero(st[:, i] == STATUS_UNREADABLE)[0].tolist():
            sh = store.shard(vb, sb, int(done[vb, sb]))
            if sh.done:
                out.append(ShardDamage(sh, sh.name, f"it marks {store.keys[i]!r} unreadable, but that image decodes "
                                                    f"here"))
    return list({(d.shard.vb, d.shard.sb): d for d in out}.values())


def _status_without(store: LabelStore, damaged: list[ShardDamage]) -> np.ndarray:
    """Per-sample status from the shards not found damaged (their verdicts are not trusted)."""
    st = np.array(store.block_status())
    for d in damaged:
        st[d.shard.vb, d.shard.s0:d.shard.s1] = 0
    bad = (st == STATUS_UNREADABLE).any(0)
    return np.where(bad, STATUS_UNREADABLE, st.max(0)).astype(np.uint8)


def verify(store_path: str | VerifyConfig, data: str | None = None, *, teacher=None, **settings) -> VerifyReport:
    """Recompute random stored views in fp32 and compare; check shards, completeness and pixel drift.

    ``verify(VerifyConfig(...))``, or ``verify(store, data, samples=..., ...)`` with any of its
    fields: ``teacher_checkpoint`` (a path, or one per ensemble member), ``compile`` (torch.compile
    the teacher), ``renderer`` (what replays the views; ``auto``: torch on CUDA, Pillow on CPU).
    ``teacher``: a ready teacher object (a ``FunctionTeacher``) instead of rebuilding the store's.
    """
    cfg = config_of_call(VerifyConfig, store_path, data, settings, "verify", "the store and the images it was made from")
    store_path, data, samples, device, renderer = cfg.store, cfg.data, cfg.samples, cfg.device, cfg.renderer
    store = LabelStore.open(store_path)
    h = store.header
    rep = VerifyReport()
    rep.pending_shards = len(store.pending_shards())
    rep.damaged = store.check_shards()  # files, checksums, and each shard's seal (its store and place)
    if not store.sealed:
        rep.notes.append(f"store schema {h.schema_version} has no shard seals: a shard copied from another store "
                         f"or moved within this one cannot be told apart (regenerate with this relabel to seal them)")
    source = open_source(data, h.key_rule)
    missing = [k for k in store.keys if k not in source.index()]
    if missing:
        raise SourceError(f"{data}: {len(missing)} of the store's {h.num_samples} samples are missing "
                          f"(first: {missing[0]!r}); verify needs the images the labels were made from")
    if list(source.class_names) != list(h.class_names):
        raise SourceError(f"{data}: its classes ({len(source.class_names)}) are not the store's "
                          f"({len(h.class_names)}); verify needs the images the labels were made from")
    index = source.index()
    stored = store.sample_classes()
    if stored is not None:  # each image filed under the class it was labelled with
        own = np.asarray(source.labels)[[index[k] for k in store.keys]]
        rep.misfiled = [store.keys[i] for i in np.nonzero((stored >= 0) & (stored != own))[0]]
    if source.fingerprint_for(h.schema_version) != h.fingerprint and not rep.misfiled:
        rep.notes.append(f"{data} holds {len(source) - h.num_samples} image(s) the store has no labels for")
    if store.has_digests:  # every sample's bytes against the bytes its labels were made from
        byte_damage, rep.changed_images = store.check_bytes(source, skip=rep.damaged)
        rep.damaged += byte_damage
    else:
        rep.notes.append(f"store schema {h.schema_version} records no digests of the image bytes it was labelled "
                         f"from: another image under the same name cannot be told apart (regenerate with this "
                         f"relabel to record them)")
    rep.damaged += check_unreadable(store, source)  # an "unreadable" that decodes here is no verdict on it
    from relabel.models import pick_device

    where = pick_device(device) if teacher is None else teacher.device
    view_renderer = create_renderer(renderer, ViewRenderer.of_store(h), where, cfg.render_kernel)
    drift = replay_check.check(h.replay_check, view_renderer, lambda k: source.read(source.index()[k]),
                               lambda k: k in source.index(), device=where)
    if drift:
        rep.drift = drift.message()
    if samples <= 0:
        return rep
    t = h.teacher
    if teacher is None:
        teacher, notes = rebuild_teacher(t, cfg.teacher_checkpoint, device=device, compile=cfg.compile)
        rep.notes.extend(notes)
    made_in = t.get("precision", "auto")
    if made_in not in _TOLERANCE:
        raise StoreError(f"{store_path}: the header records teacher precision {made_in!r}, which this relabel "
                         f"does not know; upgrade relabel")
    if made_in == "auto":
        rep.notes.append("the store does not record the precision its teacher ran in (made by relabel < 0.2): "
                         "checked with the bf16 tolerance")
    rep.allowed_error = h.encoding.max_error + _TOLERANCE[made_in]
    done = store.done_views()
    status = _status_without(store, rep.damaged)
    rng = np.random.default_rng(cfg.seed)
    cand_p = np.nonzero(status == STATUS_OK)[0]
    if len(cand_p) == 0:
        rep.notes.append("no readable samples to recompute")
        return rep
    pos = rng.choice(cand_p, size=samples)
    views = rng.integers(*store.held_views, size=samples)  # a pulled range of views holds only those
    keep = done[views // h.views_per_shard, pos // h.samples_per_shard] > views % h.views_per_shard
    damaged = {(d.shard.vb, d.shard.sb) for d in rep.damaged}
    keep &= [(int(v) // h.views_per_shard, int(p) // h.samples_per_shard) not in damaged for p, v in zip(pos, views)]
    if not h.resize_rule_certain:  # views of images taller than 100:1 are unknown here: not recomputed
        tall = _tall_samples(store, source, pos, views, status)
        if tall.any():
            rep.notes.append(f"{int(tall.sum())} sampled view(s) show an image taller than 100:1, whose views this "
                             f"store cannot pin down (made under Pillow 12.2/12.3 before render rules were "
                             f"recorded): not recomputed; training refuses those images")
        keep &= ~tall
    pos, views = pos[keep], views[keep]
    s_idx, s_lp = store.gather(pos, views)
    errs, kls, agree = [], [], []
    for b in range(0, len(pos), cfg.batch_size):
        sl = slice(b, b + cfg.batch_size)
        pixels = render_stored_views(store, source, pos[sl], views[sl], status, view_renderer, teacher.device)
        logits = teacher.logits(pixels).cpu()
        logp = torch.log_softmax(logits, -1)
        si = torch.from_numpy(s_idx[sl])
        top = logp.gather(1, si)
        rest = torch.logsumexp(logp.scatter(1, si, float("-inf")), 1, keepdim=True)
        fresh = torch.cat([top, rest], 1)
        stored = torch.from_numpy(s_lp[sl])
        fresh = fresh.clamp(min=h.encoding.floor)
        same = fresh == stored  # both -inf (k = C: no rest mass) counts as equal, not NaN
        err = torch.where(same, 0.0, (fresh - stored).abs())
        errs.append(err.max(1).values)
        p, q = fresh.exp(), torch.log_softmax(stored, 1)
        kls.append(torch.where(p > 0, p * (fresh - q), 0.0).sum(1))
        agree.append(logp.argmax(1) == si[:, 0])
    rep.checked = len(pos)
    if rep.checked:
        rep.max_logp_error = float(torch.cat(errs).max())
        rep.mean_kl = float(torch.cat(kls).mean())
        rep.top1_agreement = float(torch.cat(agree).float().mean())
    return rep
