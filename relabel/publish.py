"""Share label sets: ``relabel export`` (webdataset tars), ``relabel publish`` (store + shards +
manifest + dataset card to a folder, an fsspec URL or the Hugging Face Hub) and ``relabel pull``
(checked download, optionally of a range of views).

The file formats and transport live in ``relabel.storage`` (``export_format``, ``export``, ``exported``,
``manifest``, ``remotes``, ``publish`` and ``card``); this module gathers the pieces and is the CLI face.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Optional

import typer

from relabel.storage.errors import UserError, setting

log = logging.getLogger(__name__)


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


# --------------------------------------------------------------------------- library functions
def export(store: str, to: str, images: str | None = None, shard_size: int | None = None, prefix: str = "train",
           progress: bool = False):
    """Export a label store as webdataset shards; returns ``relabel.storage.export.ExportResult``."""
    from relabel.storage import LabelStore, open_source
    from relabel.storage.export import export_webdataset
    from relabel.storage.paths import is_inside

    from .progress import progress_bar

    # Shards inside the store would be published with it; inside DATA they would become a class.
    for what, src in (("the label store", store), (f"the {setting('images')} folder", images)):
        if src and (is_inside(to, src) or is_inside(src, to, strict=True)):
            raise UserError(f"{to}: {setting('to')} lies inside {what} {src} (or holds it); export to a folder "
                            f"outside it")
    st = LabelStore.open(store)
    source = open_source(images) if images else None
    with contextlib.ExitStack() as stack:
        bar = None

        def advance(n: int) -> None:  # the bar starts with the first sample: input errors stay one line
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(progress_bar(progress, "export", st.header.num_samples, unit="samples"))
            bar.advance(n)

        return export_webdataset(st, to, images=source, shard_size=shard_size, prefix=prefix, progress=advance)


def _recipe_digest(recipe: dict) -> str | None:
    from .views import create_recipe

    try:
        return create_recipe(recipe).digest
    except Exception:  # a recipe from a newer relabel: the card still shows it in full
        return None


def publish(store: str, dest: str, shards: str | None = None, license: str = "cc-by-4.0", title: str | None = None,
            private: bool = False, jobs: int = 8):
    """Upload a store (+ exported shards) with a manifest and a dataset card; only what changed.

    Returns ``relabel.storage.publish.PublishResult``.
    """
    from relabel.storage import LabelStore
    from relabel.storage.card import dataset_card
    from relabel.storage.export_format import INDEX_NAME
    from relabel.storage.exported import load_index
    from relabel.storage.manifest import CARD_NAME, MANIFEST_NAME, SHARDS_DIR, local_files
    from relabel.storage.publish import publish_files
    from relabel.storage.store import STATUS_UNREADABLE

    if "://" in store:
        raise UserError(f"{store}: publish reads a local store folder; 'relabel pull' it first")
    st = LabelStore.open(store)
    if not st.complete:
        raise UserError(f"{store}: the store is incomplete ({len(st.pending_shards())} shard(s) pending); "
                        f"finish 'relabel generate' before publishing")
    root = os.path.realpath(store)
    if "://" not in dest:
        d = os.path.realpath(dest)
        if d == root or d.startswith(root + os.sep) or root.startswith(d + os.sep):
            raise UserError(f"{dest}: the destination must not contain the store or lie inside it")
    files: dict[str, str | bytes] = {}
    for rel, path in local_files(store, what="store").items():
        if rel in (MANIFEST_NAME, CARD_NAME) or rel.split("/")[0] == SHARDS_DIR:
            raise UserError(f"{path}: a store file clashes with the published layout ({rel}); remove it")
        files[rel] = path
    h = st.header
    index, expected = None, {}
    if shards:
        index = load_index(shards)
        ih = index.get("header") or {}
        for name in ("fingerprint", "views", "topk", "seed", "num_samples"):
            if ih.get(name) != getattr(h, name):
                raise UserError(f"{shards}: exported from another store ({name}: {ih.get(name)} vs {getattr(h, name)} "
                                f"here); export this store again")
        if ih.get("recipe") != h.recipe or ih.get("teacher") != h.teacher:
            raise UserError(f"{shards}: exported from another store (recipe or teacher differ); export this store again")
        if st.sealed and index.get("label_set_digest") != st.label_set_digest():
            raise UserError(f"{shards}: exported from another label set (its label-set digest "
                            f"{str(index.get('label_set_digest'))[:16]}... is not this store's); export this store again")
        present = local_files(shards, what="shard folder")
        wanted = [INDEX_NAME] + [s["name"] for s in index["shards"]]
        for name in wanted:
            if name not in present:
                raise UserError(f"{os.path.join(shards, name)}: missing; export again")
            files[f"{SHARDS_DIR}/{name}"] = present[name]
        expected = {f"{SHARDS_DIR}/{s['name']}": s["sha256"] for s in index["shards"]}
        extra = sorted(set(present) - set(wanted))
        if extra:
            log.warning("note: %d file(s) in %s are not in its index.json and are not published (first: %s)",
                        len(extra), shards, extra[0])
    status = st.status()
    where = dest.rstrip("/") if "://" in dest else os.path.abspath(dest)
    card = dataset_card(h.to_dict(), where, license=license, title=title, store_bytes=st.bytes_on_disk(),
                        unreadable=int((status == STATUS_UNREADABLE).sum()), shards_index=index,
                        recipe_digest=_recipe_digest(h.recipe))
    files[CARD_NAME] = card.encode()
    damaged = st.check_shards()  # a store whose shards are not its own is not published as labels
    if damaged:
        raise UserError(f"{store}: {damaged[0]}; run relabel verify, then relabel generate "
                        f"{setting('repair', True)} before publishing")
    res = publish_files(dest, files, h.to_dict(), shards=SHARDS_DIR if shards else None,
                        message=f"relabel publish: {h.teacher.get('model')} x {h.views} views",
                        private=private, jobs=jobs, expected=expected)
    res.digest = st.label_set_digest() if st.sealed else None
    return res


def pull(src: str, dest: str, views: str | None = None, shards: bool | None = None, jobs: int = 8,
         expect: str | None = None):
    """Download and check a published store; returns ``relabel.storage.publish.PullResult``.

    ``expect``: the label-set digest publish printed; any other label set is refused.
    A pull cut short is resumed by the same call; until then DEST is no store (see storage/publish.py)."""
    from relabel.storage import LabelStore
    from relabel.storage.publish import pull_files

    res = pull_files(src, dest, views=views, shards=shards, jobs=jobs, expect=expect)
    LabelStore.open(res.dest)  # the copy must open; raises a UserError if not
    return res


# --------------------------------------------------------------------------- CLI
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
        raise UserError(f"--format {format!r}: only 'webdataset' is supported")
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
