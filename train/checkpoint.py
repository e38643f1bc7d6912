"""Checkpoints of a run: written whole or not at all, and a resume that must continue the same run
(same settings, same data, same labels) or stop with one line naming what differs."""
from __future__ import annotations

import os
import shutil

import torch

from relabel.storage.errors import ConfigError, named

from .config import _RESUME_KEYS, TrainConfig
from .data import TrainData


def run_inputs(cfg: TrainConfig, data: TrainData) -> dict:
    """What a run trains on, for --resume to compare: DATA, its classes, and the labels' identity."""
    h = data.header
    labels = None
    if cfg.labels is not None:
        t = h.teacher or {}
        labels = {"path": cfg.labels, "fingerprint": h.fingerprint, "teacher": t.get("model"),
                  "teacher_sha256": t.get("checkpoint_sha256"), "teacher_weights": t.get("weights"),
                  "recipe": data.recipe.digest, "seed": h.seed, "topk": h.topk, "num_classes": h.num_classes,
                  "views": data.views, "held_views": [data.view_lo, data.view_lo + data.views],
                  # stores before seals (schema 2) have no label-set digest: they train, unpinned
                  "label_set_digest": data.store.label_set_digest() if getattr(data.store, "sealed", False) else None,
                  "img_size": h.img_size, "encoding": h.encoding.to_dict(),
                  "class_map": None if data.class_map is None else data.class_map.tolist()}
    return {"data": cfg.data, "data_fingerprint": data.source.fingerprint_for(h.schema_version),
            "class_names": list(data.source.class_names), "labels": labels}


def check_inputs(cfg: TrainConfig, ckpt: dict, data: TrainData) -> None:
    """--resume: refuse other data, other labels or other classes than the run started with."""
    old = ckpt.get("inputs")
    if not old:  # a checkpoint from before inputs were recorded
        return
    now, diff = run_inputs(cfg, data), []
    if old["data_fingerprint"] != now["data_fingerprint"]:
        diff.append(f"DATA (run: {old['data']} fingerprint {old['data_fingerprint'][:12]}, now: {now['data']} "
                    f"fingerprint {now['data_fingerprint'][:12]})")
    if old["class_names"] != now["class_names"]:
        gone = sorted(set(old["class_names"]) ^ set(now["class_names"]))[:3]
        diff.append(f"class names ({len(old['class_names'])} vs {len(now['class_names'])}"
                    f"{'; e.g. ' + ', '.join(gone) if gone else ', other order'})")
    a, b = old["labels"] or {}, now["labels"] or {}
    if bool(a) != bool(b):
        diff.append(f"labels (run: {a.get('path')}, now: {b.get('path')})")
    else:
        changed = [k for k in a if k != "path" and a.get(k) != b.get(k)]
        if changed:
            diff.append(f"labels {b.get('path')} ({', '.join(f'{k} run: {a.get(k)}, now: {b.get(k)}' for k in changed)})")
    if diff:
        raise ConfigError(f"{cfg.out}: {named('resume', True)} with other inputs than the run started with: "
                        f"{'; '.join(diff)}; use the run's own, or start a new run in another {named('out')}")


def save_checkpoint(obj: dict | str, path: str) -> None:
    """Write a checkpoint (or copy the file ``obj``) under a temporary name and rename it into place:
    a kill or a full disk leaves the previous file whole. A failed write is the user's to fix."""
    tmp = path + ".tmp"
    try:
        if isinstance(obj, str):
            shutil.copyfile(obj, tmp)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        try:
            os.remove(tmp)
        except OSError:
            pass
        kept = " (the last good checkpoint is kept)" if os.path.exists(path) else ""
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"the write failed: {str(e).splitlines()[0][:100]}"
        raise ConfigError(f"{path}: could not write the checkpoint ({why}; is the disk full?){kept}; "
                          f"free disk space and rerun with {named('resume', True)}") from None


def load_resume(cfg: TrainConfig) -> dict | None:
    last = os.path.join(cfg.out, "last.pth")
    if not cfg.resume:
        if os.path.exists(last):
            raise ConfigError(f"{cfg.out}: already holds a run (last.pth); set {named('resume', True)} to continue it "
                            f"or use another {named('out')}")
        return None
    if not os.path.isfile(last):
        raise ConfigError(f"{cfg.out}: nothing to resume (no last.pth); drop {named('resume', True)} to start a run")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    old = ckpt.get("config", {})
    diff = [f"{k} (run: {old.get(k)}, now: {getattr(cfg, k)})" for k in _RESUME_KEYS
            if k in old and old.get(k) != getattr(cfg, k)]
    if diff:
        raise ConfigError(f"{cfg.out}: {named('resume', True)} with other settings: {'; '.join(diff)}")
    return ckpt
