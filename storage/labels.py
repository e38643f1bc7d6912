"""Where stage two's labels come from: a label store or exported shards, local or remote.

``LabelSource`` is what the trainer asks of any source of views (``ViewPlan`` in train/data.py answers
it for a dataset with no labels); ``LabelRows`` adds the stored rows (``LabelStore``,
``ExportedLabelStore``). Optional extras a source may have: ``held_views`` (a pulled range of views),
``require_sealed()`` (check every shard's seal once), ``pending_shards()``.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .exported import ExportedLabelStore, is_export
from .header import StoreHeader
from .pull_marker import refuse_unfinished_pull
from .store import LabelStore


@runtime_checkable
class LabelSource(Protocol):
    """The views of a dataset: its header (recipe, seed, classes), keys in store order, which samples
    can be trained on (``status``: 1 ok, 2 unreadable in stage one) and whether it is complete."""

    header: StoreHeader

    @property
    def keys(self) -> list[str]: ...

    @property
    def complete(self) -> bool: ...

    def status(self) -> np.ndarray: ...


@runtime_checkable
class LabelRows(LabelSource, Protocol):
    """A label source with stored rows: every sample's top-k indices and k+1 log-probs of view ``v``."""

    def read_view(self, v: int) -> tuple[np.ndarray, np.ndarray]: ...


def open_labels(path_or_url: str) -> LabelRows:
    """A zarr label store, or a webdataset export of one: both answer ``LabelRows``."""
    refuse_unfinished_pull(str(path_or_url))  # half a pull: say so rather than "damaged"
    if is_export(path_or_url):
        return ExportedLabelStore(path_or_url)
    return LabelStore.open(path_or_url)


__all__ = ["LabelSource", "LabelRows", "open_labels"]
