"""The sharing commands: ``relabel export``, ``publish`` and ``pull`` (typer functions over
``relabel.stages.publish``'s library functions; ``cli`` registers them)."""
from __future__ import annotations

from typing import Optional

import typer

from relabel.stages.publish import export, publish, pull
from relabel.storage.errors import ConfigError


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def export_command(
    store: str = typer.Argument(..., help="Label store folder (or URL)."),
    to: str = typer.Option(..., "--to", help="Output folder for the shards and index.json."),
    format: str = typer.Option("webdataset", "--format", help="Export format (only 'webdataset')."),
    images: Optional[str] = typer.Option(None, "--images", help="Put these images (ImageFolder or shards, the ones "
                                         "the labels were made from) and their .cls into the shards."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Samples per tar (default: the store's "
                                             "samples per shard, a multiple of the mix group)."),
    prefix: str = typer.Option("train", "--prefix", help="Shard names: PREFIX-000000.tar, ..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Write a label store as webdataset tar shards: one labels.npy per sample holding all its views."""
    if format != "webdataset":
        raise ConfigError(f"--format {format!r}: only 'webdataset' is supported")
    r = export(store, to, images=images, shard_size=shard_size, prefix=prefix, progress=not quiet)
    for note in r.notes:
        _say(f"note: {note}")
    extra = f", images {r.image_bytes / r.num_samples:,.0f} B/sample" if images else ""
    typer.echo(f"exported {r.num_samples:,} samples in {len(r.shards)} shard(s), {r.total_bytes:,} bytes "
               f"({r.bytes_per_sample:,.0f} B/sample; labels {r.label_bytes_per_sample:,.0f} B/sample{extra}) -> {to}")


def publish_command(
    store: str = typer.Argument(..., help="Label store folder."),
    dest: str = typer.Argument(..., help="Local folder, fsspec URL (s3://bucket/prefix, ...) or hf://datasets/ORG/NAME."),
    shards: Optional[str] = typer.Option(None, "--shards", help="Also publish this 'relabel export' folder "
                                         "(as webdataset/)."),
    license: str = typer.Option("cc-by-4.0", "--license", help="License in the dataset card."),
    title: Optional[str] = typer.Option(None, "--title", help="Dataset card title."),
    private: bool = typer.Option(False, "--private", help="Hugging Face: create the repository private."),
    jobs: int = typer.Option(8, "--jobs", help="Parallel uploads (fsspec destinations)."),
):
    """Upload a label store (+ shards) with manifest.json and a dataset card; only changed files."""
    r = publish(store, dest, shards=shards, license=license, title=title, private=private, jobs=jobs)
    for rel in r.deleted:
        _say(f"deleted stale {rel}")
    typer.echo(f"published to {dest}: uploaded {len(r.uploaded)} file(s) ({r.uploaded_bytes:,} bytes), "
               f"{len(r.unchanged)} unchanged, {len(r.deleted)} deleted; {r.total_bytes:,} bytes in all")
    if r.digest:
        typer.echo(f"label-set digest {r.digest} (pin it: relabel pull {dest} DEST --expect {r.digest})")


def pull_command(
    src: str = typer.Argument(..., help="Where the store was published: folder, fsspec URL or hf://datasets/ORG/NAME."),
    dest: str = typer.Argument(..., help="Local folder for the copy (new, empty, or an earlier pull to resume)."),
    views: Optional[str] = typer.Option(None, "--views", help="Only views 0..N-1 ('N') or A..B-1 ('A:B'): fetches "
                                        "only the view blocks that hold them."),
    shards: Optional[bool] = typer.Option(None, "--shards/--no-shards", help="Also fetch the webdataset shards "
                                          "(default: yes, unless --views picks a subset)."),
    jobs: int = typer.Option(8, "--jobs", help="Parallel downloads."),
    expect: Optional[str] = typer.Option(None, "--expect", help="Refuse any label set but this one: the label-set "
                                         "digest 'relabel publish' printed."),
):
    """Download a published label store and check every file's sha256 against its manifest."""
    r = pull(src, dest, views=views, shards=shards, jobs=jobs, expect=expect)
    part = f", views {r.views[0]}-{r.views[1] - 1} only" if r.views else ""
    sealed = f"; label-set digest {r.digest}" + (" (as expected)" if expect else "") if r.digest else ""
    typer.echo(f"pulled {src} -> {dest}: fetched {len(r.fetched)} file(s) ({r.fetched_bytes:,} bytes), "
               f"{len(r.reused)} already present, {len(r.skipped)} not needed{part}; all sha256 OK{sealed}")
