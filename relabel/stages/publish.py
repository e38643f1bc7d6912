"""Share label sets: ``relabel export`` (webdataset tars), ``relabel publish`` (store + shards +
manifest + dataset card to a folder, an fsspec URL or the Hugging Face Hub) and ``relabel pull``
(checked download, optionally of a range of views).

The file formats and transport live in ``relabel.storage`` (``export_format``, ``export``, ``exported``,
``manifest``, ``remotes``, ``publish`` and ``card``); this module gathers the pieces; the commands
are relabel/commands/share.py.
"""
from __future__ import annotations

import contextlib
import logging
import os

from relabel.settings import default_of
from relabel.storage.errors import StoreError, named

from .share_config import ExportConfig, PublishConfig, PullConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- library functions
def export(store: str, to: str, images: str | None = None, shard_size: int | None = None,
           prefix: str = default_of(ExportConfig, "prefix"), progress: bool = False):
    """Export a label store as webdataset shards; returns ``relabel.storage.export.ExportResult``."""
    cfg = ExportConfig(store=store, to=to, images=images, shard_size=shard_size, prefix=prefix, progress=progress)
    store, to, images, shard_size, prefix, progress = (cfg.store, cfg.to, cfg.images, cfg.shard_size, cfg.prefix,
                                                       cfg.progress)
    from relabel.storage import LabelStore, open_source
    from relabel.storage.export import export_webdataset
    from relabel.storage.paths import is_inside

    from relabel.progress import progress_bar

    # Shards inside the store would be published with it; inside DATA they would become a class.
    for what, src in (("the label store", store), (f"the {named('images')} folder", images)):
        if src and (is_inside(to, src) or is_inside(src, to, strict=True)):
            raise StoreError(f"{to}: {named('to')} lies inside {what} {src} (or holds it); export to a folder "
                             f"outside it")
    st = LabelStore.open(store)
    source = open_source(images, st.header.key_rule) if images else None
    with contextlib.ExitStack() as stack:
        bar = None

        def advance(n: int) -> None:  # the bar starts with the first sample: input errors stay one line
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(progress_bar(progress, "export", st.header.num_samples, unit="samples"))
            bar.advance(n)

        return export_webdataset(st, to, images=source, shard_size=shard_size, prefix=prefix, progress=advance)


def _recipe_digest(recipe: dict) -> str | None:
    from relabel.views import create_recipe

    try:
        return create_recipe(recipe).digest
    except Exception:  # a recipe from a newer relabel: the card still shows it in full
        return None


CARD_SAMPLES, CARD_VIEWS, CARD_TILE = 4, 4, 128  # the card's contact sheet: small
CARD_STATS_SAMPLES = 10_000  # the card's statistics: every view of this many random samples


def _card_extras(st, data: str | None) -> tuple[dict, bytes | None]:
    """The card's statistics table (always; agreement when the ground truth is known) and, with
    DATA, its contact sheet as PNG bytes. Seeded, so the same store and DATA give the same card."""
    import io

    from relabel.stages.show import show
    from relabel.stages.stats import label_stats

    stats = label_stats(st, data, stats_samples=CARD_STATS_SAMPLES, seed=0, progress=False)
    if data is None:
        return stats, None
    lo, hi = st.held_views
    img = show(st.path, data, samples=CARD_SAMPLES, views=list(range(lo, min(hi, lo + CARD_VIEWS))),
               tile_size=CARD_TILE, seed=0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return stats, buf.getvalue()


def publish(store: str, dest: str, shards: str | None = None, license: str = default_of(PublishConfig, "license"),
            title: str | None = None, private: bool = False, jobs: int = default_of(PublishConfig, "jobs"),
            data: str | None = None):
    """Upload a store (+ exported shards) with a manifest and a dataset card; only what changed.

    The card carries the labels' statistics (``relabel info --stats`` over every view of up to
    10,000 random samples) and, given ``data`` (the images the labels were made from), a small contact
    sheet (``relabel show``) published beside it; ``data`` also gives the statistics their agreement
    with the ground truth. Returns ``relabel.storage.publish.PublishResult``.
    """
    cfg = PublishConfig(store=store, dest=dest, shards=shards, license=license, title=title, private=private, jobs=jobs,
                        data=data)
    store, dest, shards, license, title, private, jobs, data = (cfg.store, cfg.dest, cfg.shards, cfg.license, cfg.title,
                                                                 cfg.private, cfg.jobs, cfg.data)
    from relabel.storage import LabelStore
    from relabel.storage.card import SHEET_NAME, dataset_card
    from relabel.storage.export_format import INDEX_NAME
    from relabel.storage.exported import load_index
    from relabel.storage.manifest import CARD_NAME, MANIFEST_NAME, SHARDS_DIR, local_files
    from relabel.storage.publish import publish_files
    from relabel.storage.store import STATUS_UNREADABLE

    if "://" in store:
        raise StoreError(f"{store}: publish reads a local store folder; 'relabel pull' it first")
    st = LabelStore.open(store)
    if not st.complete:
        raise StoreError(f"{store}: the store is incomplete ({len(st.pending_shards())} shard(s) pending); "
                         f"finish 'relabel generate' before publishing")
    root = os.path.realpath(store)
    if "://" not in dest:
        d = os.path.realpath(dest)
        if d == root or d.startswith(root + os.sep) or root.startswith(d + os.sep):
            raise StoreError(f"{dest}: the destination must not contain the store or lie inside it")
    files: dict[str, str | bytes] = {}
    for rel, path in local_files(store, what="store").items():
        if rel in (MANIFEST_NAME, CARD_NAME, SHEET_NAME) or rel.split("/")[0] == SHARDS_DIR:
            raise StoreError(f"{path}: a store file clashes with the published layout ({rel}); remove it")
        files[rel] = path
    h = st.header
    index, expected = None, {}
    if shards:
        index = load_index(shards)
        ih = index.get("header") or {}
        for name in ("fingerprint", "views", "topk", "seed", "num_samples"):
            if ih.get(name) != getattr(h, name):
                raise StoreError(f"{shards}: exported from another store ({name}: {ih.get(name)} vs {getattr(h, name)} "
                                 f"here); export this store again")
        if ih.get("recipe") != h.recipe or ih.get("teacher") != h.teacher:
            raise StoreError(f"{shards}: exported from another store (recipe or teacher differ); export this store again")
        if st.sealed and index.get("label_set_digest") != st.label_set_digest():
            raise StoreError(f"{shards}: exported from another label set (its label-set digest "
                             f"{str(index.get('label_set_digest'))[:16]}... is not this store's); export this store again")
        present = local_files(shards, what="shard folder")
        wanted = [INDEX_NAME] + [s["name"] for s in index["shards"]]
        for name in wanted:
            if name not in present:
                raise StoreError(f"{os.path.join(shards, name)}: missing; export again")
            files[f"{SHARDS_DIR}/{name}"] = present[name]
        expected = {f"{SHARDS_DIR}/{s['name']}": s["sha256"] for s in index["shards"]}
        extra = sorted(set(present) - set(wanted))
        if extra:
            log.warning("note: %d file(s) in %s are not in its index.json and are not published (first: %s)",
                        len(extra), shards, extra[0])
    damaged = st.check_shards()  # a store whose shards are not its own is not published as labels
    if damaged:
        raise StoreError(f"{store}: {damaged[0]}; run relabel verify, then relabel generate "
                         f"{named('repair', True)} before publishing")
    status = st.status()
    where = dest.rstrip("/") if "://" in dest else os.path.abspath(dest)
    stats, sheet = _card_extras(st, data)
    if sheet is not None:
        files[SHEET_NAME] = sheet
    lo, hi = st.held_views
    card = dataset_card(h.to_dict(), where, license=license, title=title, store_bytes=st.bytes_on_disk(),
                        unreadable=int((status == STATUS_UNREADABLE).sum()), shards_index=index,
                        recipe_digest=_recipe_digest(h.recipe), stats=stats,
                        sheet=SHEET_NAME if sheet is not None else None,
                        sheet_views=(min(CARD_SAMPLES, h.num_samples), min(CARD_VIEWS, hi - lo)))
    files[CARD_NAME] = card.encode()
    res = publish_files(dest, files, h.to_dict(), shards=SHARDS_DIR if shards else None,
                        message=f"relabel publish: {h.teacher.get('model')} x {h.views} views",
                        private=private, jobs=jobs, expected=expected)
    res.digest = st.label_set_digest() if st.sealed else None
    return res


def pull(src: str, dest: str, views: str | None = None, shards: bool | None = None,
         jobs: int = default_of(PullConfig, "jobs"), expect: str | None = None):
    """Download and check a published store; returns ``relabel.storage.publish.PullResult``.

    ``expect``: the label-set digest publish printed; any other label set is refused.
    A pull cut short is resumed by the same call; until then DEST is no store (see storage/publish.py)."""
    cfg = PullConfig(src=src, dest=dest, views=views, shards=shards, jobs=jobs, expect=expect)
    from relabel.storage import LabelStore
    from relabel.storage.publish import pull_files

    res = pull_files(cfg.src, cfg.dest, views=cfg.views, shards=cfg.shards, jobs=cfg.jobs, expect=cfg.expect)
    LabelStore.open(res.dest)  # the copy must open; raises a StoreError if not
    return res
