"""Shard claims: how writers on one local store split its shards, and survive each other's deaths.

A claim is a file ``.claims/<vb>.<sb>`` holding "<host> <pid>", kept alive by its holder touching it
(``keep_claims_alive``). It is stale when it was not touched for ``lease`` seconds, whatever host or
PID it names (a preempted node, a new container, a reused PID), or at once when it names a dead
process on this host. Remote stores have no claims. ``ShardClaims`` is a part of ``LabelStore``.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid

from .header import Shard

CLAIMS_DIR = ".claims"  # <vb>.<sb>: "<host> <pid>" of the process computing that shard (local stores)
CLAIM_LEASE = 60.0  # seconds: a claim whose file was not touched for this long is stale, whoever holds it


def _is_remote(path: str) -> bool:
    return "://" in path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ShardClaims:
    """Claims on a local store's shards (``path``: the store folder; ``_held``: this process's)."""

    def _claim_path(self, sh: Shard) -> str:
        return os.path.join(self.path, CLAIMS_DIR, f"{sh.vb}.{sh.sb}")

    def _now_on_store(self) -> float:
        """The store file system's clock (a probe file's mtime): claim ages never mix two clocks."""
        probe = os.path.join(self.path, CLAIMS_DIR, f".now-{os.getpid()}")
        try:
            with open(probe, "w"):
                pass
            return os.stat(probe).st_mtime
        except OSError:
            return time.time()
        finally:
            with contextlib.suppress(OSError):
                os.remove(probe)

    def _claim_stale(self, path: str, lease: float, now: float | None = None) -> bool:
        try:
            age = (self._now_on_store() if now is None else now) - os.stat(path).st_mtime
        except FileNotFoundError:
            return True
        if age > lease:
            return True
        try:
            host, pid = open(path).read().split()
            pid_n = int(pid)
        except (OSError, ValueError):
            return False  # being written (or torn): held until its lease runs out
        return host == socket.gethostname() and pid_n != os.getpid() and not _pid_alive(pid_n)

    def holds(self, sh: Shard) -> bool:
        """Whether this process still holds its claim on ``sh`` (a stalled writer's may have been
        taken over after its lease): checked before a shard is written. Remote stores: always."""
        if _is_remote(self.path):
            return True
        try:
            return open(self._claim_path(sh)).read().strip() == f"{socket.gethostname()} {os.getpid()}"
        except OSError:
            return False

    def claim(self, sh: Shard, lease: float = CLAIM_LEASE, force: bool = False) -> bool:
        """Claim a shard for this process before computing it, so two writers on one store split the
        work. False: another process holds a live claim. A stale claim (see above) is taken over;
        ``force`` takes over any claim (``generate --repair``)."""
        if _is_remote(self.path):
            return True
        os.makedirs(os.path.join(self.path, CLAIMS_DIR), exist_ok=True)
        path, me = self._claim_path(sh), f"{socket.gethostname()} {os.getpid()}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                mine = open(path).read().strip() == me
            except OSError:
                mine = False
            if not (mine or force or self._claim_stale(path, lease)):
                return False
            tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
            with open(tmp, "w") as f:
                f.write(me)
            os.replace(tmp, path)
        else:
            with os.fdopen(fd, "w") as f:
                f.write(me)
        self._held.add(path)
        return True

    @contextlib.contextmanager
    def keep_claims_alive(self, every: float):
        """Touch this process's claims every ``every`` seconds while the block runs (a daemon thread)."""
        stop = threading.Event()

        def beat():
            while not stop.wait(every):
                for path in list(self._held):
                    with contextlib.suppress(OSError):
                        os.utime(path)

        t = threading.Thread(target=beat, name="relabel-claims", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    def remove_stale_claims(self, lease: float = CLAIM_LEASE, force: bool = False) -> int:
        """Delete stale claims (all of them with ``force``); returns how many."""
        d = os.path.join(self.path, CLAIMS_DIR)
        if _is_remote(self.path) or not os.path.isdir(d):
            return 0
        n, now = 0, self._now_on_store()
        for name in os.listdir(d):
            path = os.path.join(d, name)
            if name.startswith(".now-"):
                continue
            if force or self._claim_stale(path, lease, now):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                n += 1
        return n

    def release(self, sh: Shard) -> None:
        """Drop this process's claim on ``sh`` (never another writer's that took it over)."""
        if not _is_remote(self.path):
            path = self._claim_path(sh)
            self._held.discard(path)
            if self.holds(sh):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
