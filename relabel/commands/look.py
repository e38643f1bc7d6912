"""The commands that look at labels: ``relabel info`` (a summary; ``--stats``: what the labels say)
and ``relabel show`` (a contact sheet). Both are built from their config records
(relabel/stages/show_config.py); heavy imports stay in the bodies, so ``--help`` imports no torch."""
from __future__ import annotations

import inspect
import json

import typer

from relabel.stages.show_config import ShowConfig, StatsConfig
from relabel.storage.errors import ConfigError, named

from .options import command_from, config_from_params, quiet


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def _summary(labels) -> dict:
    """``LabelStore.summary()``, or the same fields for an export (which has no files of its own to count)."""
    summary = getattr(labels, "summary", None)
    if summary is not None:
        return summary()
    from relabel.storage.header import STATUS_UNREADABLE

    h = labels.header
    return {"path": labels.path, "kind": "webdataset export", "num_samples": h.num_samples, "views": h.views,
            "held_views": [0, h.views], "topk": h.topk, "num_classes": h.num_classes, "teacher": h.teacher,
            "recipe": h.recipe.get("name"), "seed": h.seed, "img_size": h.img_size, "encoding": h.encoding.to_dict(),
            "fingerprint": h.fingerprint, "complete": labels.complete, "missing_files": [],
            "corrupt_samples": int((labels.status() == STATUS_UNREADABLE).sum()), "schema_version": h.schema_version,
            "writer": h.writer, "label_set_digest": None, "key_rule": h.key_rule, "resize_rule": h.resize_rule}


def _summary_text(s: dict) -> str:
    t = s["teacher"]
    if t.get("members"):
        own = ", each at its own input size (--teacher-own-size)" if t["members"][0].get("own_size") else ""
        t = {"model": " + ".join(f"{m['model']} x{m['weight']:.3g}" for m in t["members"]) + own,
             "checkpoint_sha256": "ensemble"}
    held = s["held_views"]
    views = f"{s['views']}" if held == [0, s["views"]] else f"{held[0]}-{held[1] - 1} of {s['views']} (a pulled range)"
    size = (f"\n  size         {s['bytes_on_disk']:,} bytes ({s['bytes_per_view']:.1f} B/view, labels "
            f"{s['label_bytes_per_view']:.1f} B/view)" if "bytes_on_disk" in s else "")
    return (f"{s['path']}" + (f" ({s['kind']})" if s.get("kind") else "")
            + f"\n  samples      {s['num_samples']:,} ({s['corrupt_samples']} unreadable)\n"
            f"  views        {views} (complete: {s['complete']})\n  top-k        {s['topk']} of {s['num_classes']} classes\n"
            f"  teacher      {t.get('model')} ({t.get('checkpoint_sha256') or 'pretrained'}) at {s['img_size']}px\n"
            f"  recipe       {s['recipe']} seed {s['seed']}\n  encoding     {s['encoding']['name']}" + size
            + f"\n  keys         {_KEYS.get(s.get('key_rule', 'path'), s.get('key_rule'))}"
            + f"\n  render rule  resize {s.get('resize_rule')} (replays byte for byte on any Pillow 10.4-13)"
            + f"\n  fingerprint  {s['fingerprint'][:16]}"
            + (f"\n  label set    {s['label_set_digest']}" if s.get("label_set_digest") else ""))


# What each key rule means to someone holding another copy of the images (storage/keys.py).
_KEYS = {"path": "path (DATA-relative paths: replays on a copy with the same folder layout)",
         "stem": "stem (file names: replays on any copy with the same file names)",
         "imagenet": "imagenet (ImageNet names: replays on folders, webdataset tars and Hugging Face parquet)"}


def _info(params: dict) -> None:
    from relabel.storage.labels import open_labels

    stats, as_json = params.pop("stats"), params.pop("as_json")
    cfg = config_from_params(StatsConfig, params)
    stats = stats or cfg.plot is not None or cfg.data is not None or cfg.stats_samples is not None
    labels = open_labels(cfg.store)
    s = _summary(labels)
    if s["missing_files"]:
        _say(f"damaged: {len(s['missing_files'])} file(s) of finished shards are missing or empty (first: "
             f"{s['missing_files'][0]}); run 'relabel generate --repair' with the same DATA and settings")
    if stats:
        from relabel.stages.stats import label_stats, plot_stats

        s["stats"] = label_stats(labels, cfg.data, stats_samples=cfg.stats_samples, seed=cfg.seed,
                                 allow_subset=cfg.allow_subset, progress=cfg.progress and not as_json)
        if cfg.plot:
            plot_stats(s["stats"], cfg.plot)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    typer.echo(_summary_text(s))
    if stats:
        from relabel.storage.stats import format_stats

        typer.echo(format_stats(s["stats"]))
        if s["stats"]["agreement"] is None:
            _say("note: the agreement with the ground truth needs the images: --data DATA (the images the labels "
                 "were made from)")
        if cfg.plot:
            _say(f"wrote {cfg.plot}")


_STATS = inspect.Parameter("stats", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                           default=typer.Option(False, "--stats", help="Also what the labels say: agreement with the "
                                                "ground truth, top-1 probability, rest mass, entropy, worst classes."))
_JSON = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--json", help="Machine-readable output."))

# Built from StatsConfig's fields (relabel/stages/show_config.py), plus the output switches.
info = command_from(StatsConfig, _info, "info", "Summarize a label store, export or pulled copy; --stats: what its "
                    "labels say.", extra=(_STATS, _JSON, quiet()))


def _show(params: dict) -> None:
    from relabel.stages.show import show as run, sidecar_path

    cfg = config_from_params(ShowConfig, params, lists=("key",))
    if not cfg.out:
        raise ConfigError(f"{named('out')} is needed: the PNG to write, e.g. {named('out', 'sheet.png')}")
    img = run(cfg)
    meta = img.info["relabel"]
    typer.echo(f"wrote {cfg.out} ({len(meta['keys'])} samples x {len(meta['views'])} views, {img.width}x{img.height} px) "
               f"and {sidecar_path(cfg.out)}")


show = command_from(ShowConfig, _show, "show", "A contact sheet: stored views as the student replays them, each with "
                    "its ground truth, the teacher's top-3 and the rest mass.")
