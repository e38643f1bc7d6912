"""Process-level defaults shared by the CLI and the config records (one place, so they cannot drift)."""
from __future__ import annotations

import os


def default_workers() -> int:
    """DataLoader workers per process when none are given."""
    return min(8, os.cpu_count() or 1)
