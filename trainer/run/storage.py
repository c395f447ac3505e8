"""Files in ``gs://`` (through google-cloud-storage, so ``STORAGE_EMULATOR_HOST`` works) or on local
disk, behind one small interface: glob, parallel download, upload, small text reads and writes."""

from __future__ import annotations

import contextlib
import fnmatch
import glob as globlib
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError

GLOB_CHARS = re.compile(r"[*?\[]")


class StorageError(TrainerError):
    """A missing object or an unusable URI; the trainer reports it as a user error."""


def is_gcs(uri: str) -> bool:
    """Whether ``uri`` names a GCS object or prefix."""
    return uri.startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket")
    return bucket, name


def join(base: str, *parts: str) -> str:
    """Join a URI or path with parts using ``/``."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


@dataclass
class Storage:
    """GCS and local files. The GCS client is created on first use (it reads credentials).

    Every GCS request gives up after ``timeout`` seconds without an answer (a stalled
    connection) and transient failures (429, 5xx, refused or reset connections, timeouts) are
    retried with exponential backoff for up to ``retry_deadline`` seconds; uploads included,
    which the client library does not retry by default (ours are idempotent: the same bytes to
    the same name, and the ``LATEST`` pointer last)."""

    parallelism: int = 8
    timeout: float = 60.0
    retry_deadline: float = 300.0
    _client: Any = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Storage:
        """Settings from ``TRAINER_STORAGE_TIMEOUT`` and ``TRAINER_STORAGE_RETRY_DEADLINE``."""
        try:
            return cls(timeout=float(env.get("TRAINER_STORAGE_TIMEOUT", cls.timeout)),
                       retry_deadline=float(env.get("TRAINER_STORAGE_RETRY_DEADLINE",
                                                    cls.retry_deadline)))
        except ValueError as err:
            raise StorageError(f"TRAINER_STORAGE_*: {err}") from None

    @property
    def _calls(self) -> dict[str, Any]:
        """``timeout`` and ``retry`` arguments for every client call."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        return {"timeout": self.timeout, "retry": DEFAULT_RETRY.with_timeout(self.retry_deadline)}

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import storage

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                self._client = storage.Client(credentials=AnonymousCredentials(),
                                              project="local")
            else:
                self._client = storage.Client()
        return self._client

    def glob(self, pattern: str) -> list[str]:
        """Sorted URIs matching ``pattern`` (``*``, ``?``, ``[..]`` in the object part)."""
        if not is_gcs(pattern):
            return sorted(globlib.glob(pattern))
        bucket, name = split_gcs(pattern)
        match = GLOB_CHARS.search(name)
        prefix = name[:match.start()] if match else name
        blobs = self.client.list_blobs(bucket, prefix=prefix, **self._calls)
        names = [b.name for b in blobs]
        if match is None:
            return [f"gs://{bucket}/{name}"] if name in names else []
        return sorted(f"gs://{bucket}/{n}" for n in names if fnmatch.fnmatchcase(n, name))

    def list_prefix(self, prefix: str) -> list[str]:
        """URIs of every object or file under ``prefix`` (a directory), sorted."""
        if not is_gcs(prefix):
            root = Path(prefix)
            return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        bucket, name = split_gcs(prefix)
        name = name.rstrip("/") + "/" if name else ""
        return sorted(f"gs://{bucket}/{b.name}" for b in self.client.list_blobs(
            bucket, prefix=name, **self._calls))

    def exists(self, uri: str) -> bool:
        """Whether the object or file exists."""
        if not is_gcs(uri):
            return Path(uri).exists()
        bucket, name = split_gcs(uri)
        return self.client.bucket(bucket).blob(name).exists(**self._calls)

    def read_text(self, uri: str) -> str:
        """Contents of a small UTF-8 text object; ``StorageError`` if it is missing, not text,
        or (a local file) cannot be read."""
        if not is_gcs(uri):
            try:
                return Path(uri).read_text(encoding="utf-8")
            except (FileNotFoundError, IsADirectoryError) as err:
                raise StorageError(f"{uri}: not found") from err
            except OSError as err:  # too long a name, no permission, ...
                raise StorageError(f"{uri}: cannot be read ({err.strerror})") from None
            except UnicodeDecodeError as err:
                raise StorageError(f"{uri}: not UTF-8 text (byte 0x{err.object[err.start]:02x} "
                                   f"at offset {err.start})") from None
        from google.api_core.exceptions import NotFound

        bucket, name = split_gcs(uri)
        try:
            return self.client.bucket(bucket).blob(name).download_as_text(**self._calls)
        except NotFound as err:
            raise StorageError(f"{uri}: not found") from err
        except UnicodeDecodeError as err:
            raise StorageError(f"{uri}: not UTF-8 text (offset {err.start})") from None

    def write_text(self, uri: str, text: str) -> None:
        """Write a small text object in one request (atomic on GCS and via rename locally)."""
        if is_gcs(uri):
            bucket, name = split_gcs(uri)
            self.client.bucket(bucket).blob(name).upload_from_string(text, **self._calls)
            return
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)

    def download(self, uri: str, dest: Path) -> Path:
        """Copy one object or file to ``dest``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not is_gcs(uri):
            if not Path(uri).is_file():
                raise StorageError(f"{uri}: not found")
            shutil.copyfile(uri, dest)
            return dest
        from google.api_core.exceptions import NotFound

        bucket, name = split_gcs(uri)
        try:
            self.client.bucket(bucket).blob(name).download_to_filename(str(dest), **self._calls)
        except NotFound as err:
            dest.unlink(missing_ok=True)
            raise StorageError(f"{uri}: not found") from err
        return dest

    def download_many(self, uris: list[str], dest_dir: Path) -> list[Path]:
        """Download in parallel, keeping file names; returns the local paths in input order."""
        targets = [dest_dir / uri.rstrip("/").rsplit("/", 1)[-1] for uri in uris]
        with ThreadPoolExecutor(max_workers=self.parallelism) as pool:
            return list(pool.map(self.download, uris, targets))

    def download_tree(self, uri: str, directory: Path) -> list[Path]:
        """Download every object or file under ``uri`` (a directory) into ``directory`` in
        parallel, keeping relative paths (``upload_tree``'s inverse); the local paths."""
        prefix = uri.rstrip("/") + "/"
        uris = self.list_prefix(uri)
        targets = [directory / item[len(prefix):] for item in uris]
        with ThreadPoolExecutor(max_workers=self.parallelism) as pool:
            return list(pool.map(self.download, uris, targets))

    def upload(self, src: Path, uri: str) -> None:
        """Copy a local file to ``uri``."""
        if is_gcs(uri):
            bucket, name = split_gcs(uri)
            self.client.bucket(bucket).blob(name).upload_from_filename(str(src), **self._calls)
            return
        dest = Path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)

    def upload_many(self, pairs: list[tuple[Path, str]]) -> None:
        """Upload ``(local file, uri)`` pairs in parallel."""
        with ThreadPoolExecutor(max_workers=self.parallelism) as pool:
            list(pool.map(lambda pair: self.upload(*pair), pairs))

    def upload_tree(self, directory: Path, uri: str) -> None:
        """Upload every file under ``directory`` to ``uri``, keeping relative paths."""
        self.upload_many([(p, join(uri, str(p.relative_to(directory))))
                          for p in directory.rglob("*") if p.is_file()])

    def delete(self, uri: str) -> None:
        """Delete one object or file if it exists."""
        if not is_gcs(uri):
            Path(uri).unlink(missing_ok=True)
            return
        bucket, name = split_gcs(uri)
        from google.api_core.exceptions import NotFound

        # Already gone counts as deleted (also: a retried delete whose first try went through).
        with contextlib.suppress(NotFound):
            self.client.bucket(bucket).blob(name).delete(**self._calls)
