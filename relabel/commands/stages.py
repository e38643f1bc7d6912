"""The stage commands: ``relabel generate``, ``info`` and ``verify`` (typer functions; ``cli``
registers them). Each keeps its heavy imports in its body, so ``--help`` imports no torch."""
from __future__ import annotations

import json
import os
import typer


from relabel.stages.generate_config import GenerateConfig
from relabel.stages.verify_config import VerifyConfig

from .options import command_from, config_from_params, quiet, with_sections


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


def info(store: str = typer.Argument(..., help="Label store."),
         as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Summarize a label store."""
    from relabel.storage import LabelStore
    s = LabelStore.open(store).summary()
    if s["missing_files"]:
        _say(f"damaged: {len(s['missing_files'])} file(s) of finished shards are missing or empty (first: "
             f"{s['missing_files'][0]}); run 'relabel generate --repair' with the same DATA and settings")
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    t = s["teacher"]
    if t.get("members"):
        own = ", each at its own input size (--teacher-own-size)" if t["members"][0].get("own_size") else ""
        t = {"model": " + ".join(f"{m['model']} x{m['weight']:.3g}" for m in t["members"]) + own,
             "checkpoint_sha256": "ensemble"}
    held = s["held_views"]
    views = f"{s['views']}" if held == [0, s["views"]] else f"{held[0]}-{held[1] - 1} of {s['views']} (a pulled range)"
    typer.echo(f"{s['path']}\n  samples      {s['num_samples']:,} ({s['corrupt_samples']} unreadable)\n"
               f"  views        {views} (complete: {s['complete']})\n  top-k        {s['topk']} of {s['num_classes']} classes\n"
               f"  teacher      {t.get('model')} ({t.get('checkpoint_sha256') or 'pretrained'}) at {s['img_size']}px\n"
               f"  recipe       {s['recipe']} seed {s['seed']}\n  encoding     {s['encoding']['name']}\n"
               f"  size         {s['bytes_on_disk']:,} bytes ({s['bytes_per_view']:.1f} B/view, labels {s['label_bytes_per_view']:.1f} B/view)\n"
               f"  fingerprint  {s['fingerprint'][:16]}" + (f"\n  label set    {s['label_set_digest']}" if s.get("label_set_digest") else ""))


def _verify(params: dict) -> None:
    from relabel.stages.verify import verify as run

    r = run(config_from_params(VerifyConfig, params, lists=("teacher_checkpoint",)))
    for line in r.damaged:
        _say(f"damaged: {line}")
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


with_sections(info)
