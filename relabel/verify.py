"""``relabel verify``: recompute stored views with the teacher and check the store's integrity."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from relabel.storage import LabelStore, UserError, open_source
from relabel.storage.manifest import sha256_file
from relabel.storage.store import STATUS_OK

from .teacher import Teacher
from .views import ViewRenderer, create_recipe, decode_image, group_partners, mix_batch

# Recomputation noise on top of the stored rounding (batch composition, kernels, reduced precision).
_TOLERANCE = {"fp32": 2e-3, "auto": 2e-3, "fp16": 0.05, "bf16": 0.1}


@dataclass
class VerifyReport:
    checked: int = 0
    top1_agreement: float = 1.0
    max_logp_error: float = 0.0
    mean_kl: float = 0.0
    allowed_error: float = 0.0
    pending_shards: int = 0
    damaged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and self.pending_shards == 0 and self.max_logp_error <= self.allowed_error


def render_stored_views(store: LabelStore, source, positions: np.ndarray, views: np.ndarray,
                        status: np.ndarray) -> torch.Tensor:
    """Rebuild the exact pixels the teacher saw for (position, view) pairs, partners included."""
    h = store.header
    recipe = create_recipe(h.recipe)
    renderer = ViewRenderer(recipe, h.seed, h.img_size)
    src, G = source.index(), recipe.mix_group
    out = []
    for p, v in zip(positions.tolist(), views.tolist()):
        g0 = p - p % G
        q = int(group_partners(recipe, h.seed, v, g0, min(G, h.num_samples - g0))[p - g0])
        members = [p] + ([q] if q >= 0 and status[q] == STATUS_OK else [])
        pix = [renderer.render(store.keys[m], v, decode_image(source.read(src[store.keys[m]]))) for m in members]
        mixed = mix_batch(recipe, h.seed, v, members, pix, [q if m == p else p for m in members])[0]
        out.append(mixed[0])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def verify(store_path: str, data: str, samples: int = 64, teacher_checkpoint: str | None = None,
           device: str = "auto", batch_size: int = 64, seed: int = 0) -> VerifyReport:
    store = LabelStore.open(store_path)
    h = store.header
    rep = VerifyReport()
    rep.pending_shards = len(store.pending_shards())
    rep.damaged = store.check_shards()
    source = open_source(data)
    missing = [k for k in store.keys if k not in source.index()]
    if missing:
        raise UserError(f"{data}: {len(missing)} of the store's {h.num_samples} samples are missing "
                        f"(first: {missing[0]!r}); verify needs the images the labels were made from")
    if samples <= 0:
        return rep
    t = h.teacher
    if teacher_checkpoint and not os.path.isfile(teacher_checkpoint):
        raise UserError(f"{teacher_checkpoint}: checkpoint not found")
    if teacher_checkpoint and t.get("checkpoint_sha256") and t["checkpoint_sha256"] != sha256_file(teacher_checkpoint)[1]:
        rep.notes.append("the teacher checkpoint differs from the one the store was made with")
    teacher = Teacher(t["model"], teacher_checkpoint, device=device, precision=t.get("precision", "auto"),
                      pretrained=teacher_checkpoint is None)
    rep.allowed_error = h.encoding.max_error + _TOLERANCE.get(t.get("precision", "auto"), 0.05)
    done = store.done_views()
    status = store.status()
    rng = np.random.default_rng(seed)
    cand_p = np.nonzero(status == STATUS_OK)[0]
    if len(cand_p) == 0:
        rep.notes.append("no readable samples to recompute")
        return rep
    pos = rng.choice(cand_p, size=samples)
    views = rng.integers(0, h.views, size=samples)
    keep = done[views // h.views_per_shard, pos // h.samples_per_shard] > views % h.views_per_shard
    damaged = {tuple(map(int, line.split(":")[0].split("/")[2:4])) for line in rep.damaged}
    keep &= [(int(v) // h.views_per_shard, int(p) // h.samples_per_shard) not in damaged for p, v in zip(pos, views)]
    pos, views = pos[keep], views[keep]
    s_idx, s_lp = store.gather(pos, views)
    errs, kls, agree = [], [], []
    for b in range(0, len(pos), batch_size):
        sl = slice(b, b + batch_size)
        logits = teacher.logits(render_stored_views(store, source, pos[sl], views[sl], status)).cpu()
        logp = torch.log_softmax(logits, -1)
        si = torch.from_numpy(s_idx[sl])
        top = logp.gather(1, si)
        rest = torch.logsumexp(logp.scatter(1, si, float("-inf")), 1, keepdim=True)
        fresh = torch.cat([top, rest], 1)
        stored = torch.from_numpy(s_lp[sl])
        floor = -255 * h.encoding.step if h.encoding.name == "q8" else -np.inf
        err = (fresh.clamp(min=floor) - stored).abs()
        errs.append(err.max(1).values)
        p, q = fresh.exp(), torch.log_softmax(stored, 1)
        kls.append((p * (fresh - q)).sum(1))
        agree.append(logp.argmax(1) == si[:, 0])
    rep.checked = len(pos)
    if rep.checked:
        rep.max_logp_error = float(torch.cat(errs).max())
        rep.mean_kl = float(torch.cat(kls).mean())
        rep.top1_agreement = float(torch.cat(agree).float().mean())
    return rep
