"""The stage commands: ``relabel generate`` and ``verify`` (typer functions; ``cli``
registers them). Each keeps its heavy imports in its body, so ``--help`` imports no torch."""
from __future__ import annotations

import os
import typer


from relabel.stages.generate_config import GenerateConfig
from relabel.stages.verify_config import VerifyConfig

from .options import command_from, config_from_params, quiet


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def _generate(params: dict) -> None:
    from relabel.stages.generate import generate as run

    s = run(config_from_params(GenerateConfig, params, lists=("teacher_checkpoint", "teacher_weight")))
    if int(os.environ.get("RANK", "0")) == 0:
        _say(f"wrote {s.views_written:,} views in {s.shards_written} shard(s) in {s.seconds:.1f}s "
             f"({s.views_per_s:,.1f} views/s); store: {s.num_samples:,} samples x {s.views} views, "
             f"complete={s.complete}, unreadable={s.corrupt_samples}, "
             f"{s.label_bytes_per_view:.1f} label bytes/view -> {params['out']}")


# Built from GenerateConfig's fields (relabel/generate_config.py): each setting is written once, there.
generate = command_from(GenerateConfig, _generate, "generate",
                        "Stage one: run the teacher over stored views and write top-k labels.", extra=(quiet(),))


def _verify(params: dict) -> None:
    from relabel.stages.verify import verify as run

    r = run(config_from_params(VerifyConfig, params, lists=("teacher_checkpoint",)))
    for line in r.damaged:
        _say(f"damaged: {line}")
    if r.misfiled:
        shown = ", ".join(repr(k) for k in r.misfiled[:5])
        _say(f"misfiled: {len(r.misfiled)} image(s) are filed under another class than their labels were made for "
             f"({shown}{' ...' if len(r.misfiled) > 5 else ''}); use the copy of the images the labels were made from")
    if r.changed_images:
        shown = ", ".join(repr(k) for k in r.changed_images[:5])
        _say(f"changed: {len(r.changed_images)} image(s) are not the bytes their labels were made from ({shown}"
             f"{' ...' if len(r.changed_images) > 5 else ''}); restore them, or relabel them with generate --repair")
    for line in r.notes:
        _say(f"note: {line}")
    if r.drift:
        _say(f"drift: {r.drift}")
    typer.echo(f"checked {r.checked} views: top-1 agreement {r.top1_agreement:.4f}, max log-prob error "
               f"{r.max_logp_error:.4g} (allowed {r.allowed_error:.4g}), mean KL {r.mean_kl:.3g}; "
               f"pending shards {r.pending_shards}, damaged shards {len(r.damaged)}")
    if not r.ok:
        _say("verify FAILED")
        raise typer.Exit(1)
    typer.echo("verify OK")


# Built from VerifyConfig's fields (relabel/verify_config.py).
verify = command_from(VerifyConfig, _verify, "verify",
                      "Recompute random stored views with the teacher; check completeness and shard integrity.")

