"""Where a published store lives: a local folder, any fsspec URL, or the Hugging Face Hub.

Remote access goes through fsspec (``s3://`` uses s3fs: set AWS_ENDPOINT_URL or
FSSPEC_S3_ENDPOINT_URL for a non-AWS endpoint, plus the usual AWS credentials) and, to write to the
Hugging Face Hub, ``huggingface_hub.HfApi`` (one commit per publish; token from HF_TOKEN or
``huggingface-cli login``). Reading ``hf://`` goes through huggingface_hub's fsspec filesystem.
Uploads put ``manifest.json`` last, so a publish cut short leaves the old manifest.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from .errors import StoreError, UserError
from .manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES
from .paths import check_regular, read_regular


def remote_error(url: str, what: str, e: Exception) -> StoreError:
    """One line for a failed remote operation: the URL, what failed, the error's type and first line."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return StoreError(f"{url}: {what} failed ({type(e).__name__}{': ' + msg[:200] if msg else ''})")


class Remote:
    """Where a published store lives. Paths are relative to its root, '/'-separated."""

    url: str

    def sizes(self) -> dict[str, int]:
        raise NotImplementedError

    def read(self, rel: str, cap: int = MAX_MANIFEST_BYTES) -> bytes | None:
        """The whole file (None if absent); more than ``cap`` bytes is a StoreError, not an allocation."""
        raise NotImplementedError

    def open(self, rel: str):
        raise NotImplementedError

    def prepare(self, private: bool = False) -> None:
        pass

    def upload(self, puts: list[tuple[str, str | bytes]], deletes: list[str], message: str, jobs: int = 8) -> None:
        raise NotImplementedError


class FsspecRemote(Remote):
    """A local folder or any fsspec URL (s3://, gs://, memory://, file://, hf:// for reading)."""

    def __init__(self, url: str):
        import fsspec

        self.url = url
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except Exception as e:  # unknown protocol, missing driver, bad options
            raise remote_error(url, "opening the destination", e) from None
        self.root = root.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.local = "file" in protocol or "local" in protocol

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def sizes(self) -> dict[str, int]:
        try:
            self.fs.invalidate_cache()
            found = self.fs.find(self.root, detail=True) if self.root else self.fs.find("", detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:
            raise remote_error(self.url, "listing the destination", e) from None
        n = len(self.root) + 1
        out = {}
        for p, info in found.items():
            p = p.rstrip("/")
            if p.startswith(self.root + "/") and info.get("type", "file") == "file":
                out[p[n:]] = int(info.get("size") or 0)
        return out

    def read(self, rel: str, cap: int = MAX_MANIFEST_BYTES) -> bytes | None:
        try:
            if self.local:
                return read_regular(self._path(rel), cap, f"a {rel}", error=StoreError)
            with self.fs.open(self._path(rel), "rb") as f:
                data = f.read(cap + 1)
        except FileNotFoundError:
            return None
        except UserError:
            raise
        except Exception as e:
            raise remote_error(self.url, f"reading {rel}", e) from None
        if len(data) > cap:
            raise StoreError(f"{self.url}/{rel}: larger than {cap >> 20} MiB; not a file relabel publish wrote")
        return data

    def open(self, rel: str):
        if self.local:  # a FIFO would block the open
            check_regular(self._path(rel), f"a published file ({rel})", error=StoreError)
        return self.fs.open(self._path(rel), "rb")

    def prepare(self, private: bool = False) -> None:
        if self.local:
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as e:
                raise remote_error(self.url, "creating the destination folder", e) from None

    def _put(self, rel: str, src: str | bytes) -> None:
        dst = self._path(rel)
        if self.local:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            tmp = dst + ".partial"
            if isinstance(src, bytes):
                with open(tmp, "wb") as f:
                    f.write(src)
            else:
                import shutil

                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        elif isinstance(src, bytes):
            self.fs.pipe_file(dst, src)
        else:
            self.fs.put_file(src, dst)

    def upload(self, puts, deletes, message, jobs: int = 8) -> None:
        manifest = [(r, s) for r, s in puts if r == MANIFEST_NAME]
        others = [(r, s) for r, s in puts if r != MANIFEST_NAME]

        def put(item):
            rel, src = item
            try:
                self._put(rel, src)
            except Exception as e:
                raise remote_error(self.url, f"uploading {rel}", e) from None

        with ThreadPoolExecutor(max(1, jobs)) as ex:
            list(ex.map(put, others))
        for item in manifest:  # last: a publish cut short leaves the old manifest, so the next run redoes it
            put(item)
        for rel in deletes:
            try:
                self.fs.rm_file(self._path(rel))
            except FileNotFoundError:
                pass
            except Exception as e:
                raise remote_error(self.url, f"deleting stale {rel}", e) from None


_HF_RE = re.compile(r"hf://datasets/([^/@]+/[^/@]+)(?:@([^/]+))?(?:/(.*))?")


class HubRemote(Remote):
    """``hf://datasets/ORG/NAME[/folder]``: reads through huggingface_hub, writes one commit."""

    def __init__(self, url: str):
        m = _HF_RE.fullmatch(url.rstrip("/"))
        if not m:
            raise StoreError(f"{url}: a Hugging Face destination is hf://datasets/ORG/NAME (labels are dataset repos)")
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise StoreError("hf:// needs huggingface_hub: pip install huggingface_hub") from None
        self.url, self.repo_id, self.revision = url.rstrip("/"), m.group(1), m.group(2)
        self.sub = (m.group(3) or "").strip("/")
        self.api = HfApi()

    def _path(self, rel: str) -> str:
        return f"{self.sub}/{rel}" if self.sub else rel

    def sizes(self) -> dict[str, int]:
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
        from huggingface_hub.hf_api import RepoFile

        try:
            tree = self.api.list_repo_tree(self.repo_id, path_in_repo=self.sub or None, recursive=True,
                                           repo_type="dataset", revision=self.revision)
            files = [f for f in tree if isinstance(f, RepoFile)]
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
            return {}
        except Exception as e:
            raise remote_error(self.url, "listing the repository", e) from None
        n = len(self.sub) + 1 if self.sub else 0
        return {f.path[n:]: int(f.size) for f in files}

    def read(self, rel: str, cap: int = MAX_MANIFEST_BYTES) -> bytes | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            p = hf_hub_download(self.repo_id, self._path(rel), repo_type="dataset", revision=self.revision)
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        except Exception as e:
            raise remote_error(self.url, f"reading {rel}", e) from None
        return read_regular(p, cap, f"a {rel}", error=StoreError)

    def open(self, rel: str):
        from huggingface_hub import HfFileSystem

        rev = f"@{self.revision}" if self.revision else ""
        return HfFileSystem().open(f"datasets/{self.repo_id}{rev}/{self._path(rel)}", "rb")

    def prepare(self, private: bool = False) -> None:
        try:
            self.api.create_repo(self.repo_id, repo_type="dataset", exist_ok=True, private=private or None)
        except Exception as e:
            raise remote_error(self.url, "creating the dataset repository", e) from None

    def operations(self, puts, deletes) -> list:
        """The commit: one add per changed file (manifest.json among them), one delete per stale file."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops = [CommitOperationAdd(path_in_repo=self._path(rel), path_or_fileobj=src) for rel, src in puts]
        return ops + [CommitOperationDelete(path_in_repo=self._path(rel)) for rel in deletes]

    def upload(self, puts, deletes, message, jobs: int = 8) -> None:
        ops = self.operations(puts, deletes)
        if not ops:
            return
        try:
            self.api.create_commit(self.repo_id, operations=ops, commit_message=message, repo_type="dataset",
                                   revision=self.revision)
        except Exception as e:
            raise remote_error(self.url, "the upload commit", e) from None


def open_remote(url: str, write: bool = False) -> Remote:
    """hf://datasets/... -> HubRemote when writing (commits); everything else through fsspec."""
    url = str(url)
    if url.startswith("hf://"):
        if not url.startswith("hf://datasets/"):
            raise StoreError(f"{url}: a Hugging Face destination is hf://datasets/ORG/NAME (labels are dataset repos)")
        return HubRemote(url) if write else FsspecRemote(url)
    return FsspecRemote(url)


__all__ = ["Remote", "FsspecRemote", "HubRemote", "open_remote", "remote_error"]
