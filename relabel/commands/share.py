"""The sharing commands: ``relabel export``, ``publish`` and ``pull`` (typer functions over
``relabel.stages.publish``'s library functions; ``cli`` registers them)."""
from __future__ import annotations

import typer

from relabel.stages.publish import export, publish, pull
from relabel.stages.share_config import ExportConfig, PublishConfig, PullConfig

from .options import command_from, config_from_params, quiet


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def _export(params: dict) -> None:
    cfg = config_from_params(ExportConfig, params)
    r = export(cfg.store, cfg.to, images=cfg.images, shard_size=cfg.shard_size, prefix=cfg.prefix, progress=cfg.progress)
    for note in r.notes:
        _say(f"note: {note}")
    extra = f", images {r.image_bytes / r.num_samples:,.0f} B/sample" if cfg.images else ""
    typer.echo(f"exported {r.num_samples:,} samples in {len(r.shards)} shard(s), {r.total_bytes:,} bytes "
               f"({r.bytes_per_sample:,.0f} B/sample; labels {r.label_bytes_per_sample:,.0f} B/sample{extra}) -> "
               f"{cfg.to}")


def _publish(params: dict) -> None:
    cfg = config_from_params(PublishConfig, params)
    r = publish(cfg.store, cfg.dest, shards=cfg.shards, license=cfg.license, title=cfg.title, private=cfg.private,
                jobs=cfg.jobs, data=cfg.data)
    for rel in r.deleted:
        _say(f"deleted stale {rel}")
    typer.echo(f"published to {cfg.dest}: uploaded {len(r.uploaded)} file(s) ({r.uploaded_bytes:,} bytes), "
               f"{len(r.unchanged)} unchanged, {len(r.deleted)} deleted; {r.total_bytes:,} bytes in all")
    if r.digest:
        typer.echo(f"label-set digest {r.digest} (pin it: relabel pull {cfg.dest} DEST --expect {r.digest})")


def _pull(params: dict) -> None:
    cfg = config_from_params(PullConfig, params)
    r = pull(cfg.src, cfg.dest, views=cfg.views, shards=cfg.shards, jobs=cfg.jobs, expect=cfg.expect)
    part = f", views {r.views[0]}-{r.views[1] - 1} only" if r.views else ""
    sealed = f"; label-set digest {r.digest}" + (" (as expected)" if cfg.expect else "") if r.digest else ""
    typer.echo(f"pulled {cfg.src} -> {cfg.dest}: fetched {len(r.fetched)} file(s) ({r.fetched_bytes:,} bytes), "
               f"{len(r.reused)} already present, {len(r.skipped)} not needed{part}; all sha256 OK{sealed}")


# Built from their config records (relabel/stages/share_config.py): each setting is written once, there.
export_command = command_from(ExportConfig, _export, "export_command", "Write a label store as webdataset tar shards: "
                              "one labels.npy per sample holding all its views.", extra=(quiet(),))
publish_command = command_from(PublishConfig, _publish, "publish_command", "Upload a label store (+ shards) with "
                               "manifest.json and a dataset card; only changed files.")
pull_command = command_from(PullConfig, _pull, "pull_command", "Download a published label store and check every "
                            "file's sha256 against its manifest.")
