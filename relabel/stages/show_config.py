"""``ShowConfig`` and ``StatsConfig``: what ``relabel show`` draws and what ``relabel info --stats``
counts, each setting written once.

Light on purpose (no torch): the CLI builds both commands from these fields at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from relabel.settings import MAX_SEED, check_settings, setting
from relabel.storage.errors import ConfigError, named

MAX_SHOW_SAMPLES, MAX_SHOW_VIEWS = 256, 32
STORE_HELP = "Label store, 'relabel export' folder or pulled copy (a folder or an fsspec URL)."


def parse_views(text: str) -> list[int]:
    """``--views``: '0,3,7' (those views) or 'A:B' (views A..B-1)."""
    try:
        if ":" in text:
            a, b = (int(x) for x in text.split(":"))
            return list(range(a, b))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{named('views')} takes view indices like 0,3,7 or a range A:B (views A..B-1), "
                          f"got {text!r}") from None


def _view_list(views: list[int]) -> list[int]:
    if not views:
        raise ValueError("at least one view index")
    if len(views) > MAX_SHOW_VIEWS:
        raise ValueError(f"at most {MAX_SHOW_VIEWS} view indices (one column each)")
    if len(set(views)) != len(views):
        raise ValueError("view indices without repeats")
    return views


def _key_list(keys: list[str]) -> list[str]:
    if not keys or len(keys) > MAX_SHOW_SAMPLES:
        raise ValueError(f"1 to {MAX_SHOW_SAMPLES} sample keys")
    return keys


@dataclass
class ShowConfig:
    store: str = setting(help=STORE_HELP, argument=True)
    data: str = setting(help="The images the labels were made from (ImageFolder or shards): the tiles are their "
                             "views, rendered as the student replays them.", argument=True)
    out: Optional[str] = setting(None, flags=("--out", "-o"),
                                 help="PNG to write (a JSON sidecar with every tile's labels goes beside it).")
    samples: int = setting(8, ge=1, le=MAX_SHOW_SAMPLES, help="Rows: this many random samples (picked by --seed).")
    key: Optional[list[str]] = setting(None, flags=("--key",), cli_type=(List[str], []), check=_key_list,
                                       help="Show this sample (its key, e.g. 'cat/cat_001'); repeat for more rows. "
                                            "Overrides --samples.")
    views: Optional[list[int]] = setting(None, cli_type=(Optional[str], None), parse=parse_views, ge=0,
                                         check=_view_list,
                                         help="Columns: stored views '0,3,7' or a range 'A:B' (default: the first 8 "
                                              "the store holds).")
    seed: int = setting(0, ge=0, le=MAX_SEED, help="Seed for picking the samples.")
    tile_size: int = setting(192, ge=32, le=1024,
                             help="Smallest tile side in pixels: views are enlarged by a whole factor (nearest "
                                  "neighbour, every pixel kept as it is) until they reach it.")
    allow_subset: bool = setting(False, flags=("--allow-subset",),
                                 help="DATA need not be the labelled dataset: keys it lacks show as missing.")
    allow_pixel_drift: bool = setting(False, flags=("--allow-pixel-drift",),
                                      help="Show views even when this machine renders the store's canonical views "
                                           "differently than stage one did.")

    __post_init__ = check_settings


@dataclass
class StatsConfig:
    store: str = setting(help=STORE_HELP, argument=True)
    data: Optional[str] = setting(None, flags=("--data",),
                                  help="The images the labels were made from: the ground truth for the agreement "
                                       "numbers (not needed when the store records each sample's class).")
    stats_samples: Optional[int] = setting(None, ge=1, help="Statistics over this many random samples (every view "
                                                            "of each); default: all.")
    seed: int = setting(0, ge=0, le=MAX_SEED, help="Seed for picking --stats-samples.")
    plot: Optional[str] = setting(None, flags=("--plot",), help="Draw the statistics into this PNG (implies --stats).")
    allow_subset: bool = setting(False, flags=("--allow-subset",),
                                 help="DATA need not be the labelled dataset: the samples it lacks have no ground "
                                      "truth.")
    progress: bool = setting(True, cli=False, help="A progress bar (the CLI's --quiet turns it off).")

    __post_init__ = check_settings
