"""``ExportConfig``, ``PublishConfig``, ``PullConfig``: the sharing commands' settings, each written once
with its limits (``relabel.settings``). The library functions (``relabel.stages.publish``) check
their keywords here, so Python callers are refused exactly what the CLI refuses.

Light on purpose (no torch): the CLI builds ``relabel export``, ``publish`` and ``pull`` from them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from relabel.settings import check_settings, setting

MAX_JOBS = 256


def _prefix(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", value):
        raise ValueError("letters, digits, '_' and '-' only, not starting with '-'")
    return value


def _digest(value: str) -> str:
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("the 64-hex-digit label-set digest that 'relabel publish' printed")
    return value


def _views(value: str) -> str:
    if not re.fullmatch(r"\s*[0-9]+\s*(:\s*[0-9]+\s*)?", value):
        raise ValueError("N (views 0..N-1) or A:B (views A..B-1)")
    return value


@dataclass
class ExportConfig:
    store: str = setting(help="Label store folder (or URL).", argument=True)
    to: str = setting(help="Output folder for the shards and index.json.", flags=("--to",))
    format: str = setting("webdataset", choices=("webdataset",), help="Export format (only 'webdataset').")
    images: Optional[str] = setting(None, help="Put these images (ImageFolder or shards, the ones the labels were made "
                                               "from) and their .cls into the shards.")
    shard_size: Optional[int] = setting(None, ge=1, help="Samples per tar (default: the store's samples per shard, a "
                                                         "multiple of the mix group).")
    prefix: str = setting("train", check=_prefix, help="Shard names: PREFIX-000000.tar, ...")
    progress: bool = setting(False, cli=False, help="A progress bar (the CLI's --quiet turns it off).")

    __post_init__ = check_settings


@dataclass
class PublishConfig:
    store: str = setting(help="Label store folder.", argument=True)
    dest: str = setting(help="Local folder, fsspec URL (s3://bucket/prefix, ...) or hf://datasets/ORG/NAME.",
                        argument=True)
    shards: Optional[str] = setting(None, help="Also publish this 'relabel export' folder (as webdataset/).")
    license: str = setting("cc-by-4.0", help="License in the dataset card.")
    title: Optional[str] = setting(None, help="Dataset card title.")
    private: bool = setting(False, flags=("--private",), help="Hugging Face: create the repository private.")
    jobs: int = setting(8, ge=1, le=MAX_JOBS, help="Parallel uploads (fsspec destinations).")
    data: Optional[str] = setting(None, help="The images the labels were made from: the dataset card then shows a "
                                             "contact sheet of a few views and the teacher's agreement with the "
                                             "ground truth.")

    __post_init__ = check_settings


@dataclass
class PullConfig:
    src: str = setting(help="Where the store was published: folder, fsspec URL or hf://datasets/ORG/NAME.",
                       argument=True)
    dest: str = setting(help="Local folder for the copy (new, empty, or an earlier pull to resume).", argument=True)
    views: Optional[str] = setting(None, check=_views, help="Only views 0..N-1 ('N') or A..B-1 ('A:B'): fetches only "
                                                            "the view blocks that hold them.")
    shards: Optional[bool] = setting(None, flags=("--shards/--no-shards",),
                                     help="Also fetch the webdataset shards (default: yes, unless --views picks a "
                                          "subset).")
    jobs: int = setting(8, ge=1, le=MAX_JOBS, help="Parallel downloads.")
    expect: Optional[str] = setting(None, check=_digest, help="Refuse any label set but this one: the label-set digest "
                                                              "'relabel publish' printed.")

    __post_init__ = check_settings
