"""What a run leaves beside its checkpoints: metrics.jsonl (one line per epoch), curves.png, and a
one-line summary per epoch."""
from __future__ import annotations

import json
import os


def write_metrics(history: list[dict], out: str) -> None:
    """Rewritten whole from the checkpoint's history, so a resumed run never duplicates lines."""
    tmp = os.path.join(out, "metrics.jsonl.tmp")
    with open(tmp, "w") as f:
        for m in history:
            f.write(json.dumps(m) + "\n")
    os.replace(tmp, os.path.join(out, "metrics.jsonl"))


def plot_curves(history: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    xs, ys = [], []
    for m in history:
        losses = m.get("losses") or []
        xs += [m["epoch"] - 1 + (i + 1) / len(losses) for i in range(len(losses))]
        ys += losses
    if ys:
        ax_loss.plot(xs, ys, lw=0.8, alpha=0.5, label="step")
    ax_loss.plot([m["epoch"] for m in history], [m["train_loss"] for m in history], "o-", label="epoch mean")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title=f"train loss ({history[-1]['mode'] if history else ''})")
    ax_loss.legend()
    for key, label in (("val_top1", "model top-1"), ("ema_top1", "EMA top-1"), ("val_top5", "model top-5")):
        pts = [(m["epoch"], m[key]) for m in history if m.get(key) is not None]
        if pts:
            ax_acc.plot(*zip(*pts), "o-", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation")
    if ax_acc.lines:
        ax_acc.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)


def summary_line(m: dict, epochs: int) -> str:
    val = ""
    if m.get("val_top1") is not None:
        val = f" | val top-1 {m['val_top1']:.2f} top-5 {m['val_top5']:.2f}"
        if m.get("ema_top1") is not None:
            val += f" (EMA {m['ema_top1']:.2f} / {m['ema_top5']:.2f})"
    return (f"epoch {m['epoch']}/{epochs} [{m['mode']}, view {m['view']}] loss {m['train_loss']:.4f} "
            f"lr {m['lr']:.2e}{val} | {m['img_s']:.1f} img/s, data wait {100 * m['data_wait_frac']:.0f}%, "
            f"{m['epoch_seconds']:.1f}s")
