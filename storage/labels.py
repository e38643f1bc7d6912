"""Where stage two's labels come from: a label store or exported shards, local or remote."""
from __future__ import annotations

from .exported import ExportedLabelStore, is_export
from .pull_marker import refuse_unfinished_pull
from .store import LabelStore


def open_labels(path_or_url: str):
    """A zarr label store, or a webdataset export of one: both answer read_view/keys/status/header."""
    refuse_unfinished_pull(str(path_or_url))  # half a pull: say so rather than "damaged"
    if is_export(path_or_url):
        return ExportedLabelStore(path_or_url)
    return LabelStore.open(path_or_url)


__all__ = ["open_labels"]
