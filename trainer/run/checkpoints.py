"""Publishing checkpoints to the run directory and finding them again.

A checkpoint ``ckpt-<step>`` is published atomically for readers: its data files are uploaded
first, its index next, and ``checkpoints/LATEST`` (holding the step) last. ``LATEST`` is a hint,
not the truth: a resume takes the newest checkpoint that is complete (index and every data shard)
and reads back whole, whatever ``LATEST`` says, and never starts over while checkpoints exist.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from trainer import contract
from trainer.errors import RetryableError, TrainerError
from trainer.run.storage import Storage, StorageError, is_gcs, join
from trainer.text import first_line

log = logging.getLogger(__name__)
CKPT_FILE = re.compile(r"ckpt-(\d+)\.(index|data-\d+-of-\d+)$")


def checkpoints_dir(run_dir: str) -> str:
    """Where published checkpoints live."""
    return join(run_dir, contract.RUN_CHECKPOINTS)


def latest_step(storage: Storage, run_dir: str) -> int | None:
    """The step of the newest complete checkpoint in ``run_dir``, or None."""
    pointer = join(run_dir, contract.RUN_CHECKPOINT_POINTER)
    try:
        text = storage.read_text(pointer).strip()
    except StorageError:
        return None
    return int(text) if text.isdigit() else None


class CheckpointError(TrainerError):
    """A checkpoint that cannot be read (truncated, not a checkpoint at all)."""


def complete_steps(storage: Storage, run_dir: str) -> list[int]:
    """Steps whose index and every data shard are published, newest first."""
    found: dict[int, set[str]] = {}
    for uri in storage.list_prefix(checkpoints_dir(run_dir)):
        match = CKPT_FILE.search(uri)
        if match:
            found.setdefault(int(match[1]), set()).add(match[2])
    complete = []
    for step, parts in found.items():
        shards = [p for p in parts if p.startswith("data-")]
        if "index" not in parts or not shards:
            continue
        total = int(shards[0].rsplit("-of-", 1)[1])
        if {f"data-{i:05d}-of-{total:05d}" for i in range(total)} <= parts:
            complete.append(step)
    return sorted(complete, reverse=True)


def verify(local_prefix: str) -> None:
    """Read every tensor of a local checkpoint (TensorFlow checks each one's CRC)."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(local_prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as err:  # DataLossError, NotFoundError, OpError: all mean unreadable
        raise CheckpointError(first_line(err) or type(err).__name__) from None


# Object-graph paths that only the TF Object Detection API's models have.
OD_API_MARKERS = ("model/_feature_extractor/", "model/_box_predictor/",
                  "model/_first_stage_", "model/_mask_rcnn_box_predictor/")


def is_od_api(local_prefix: str) -> bool:
    """Whether a checkpoint was written by the OD API (a TF2 Detection Zoo checkpoint)."""
    import tensorflow as tf

    names = tf.train.load_checkpoint(local_prefix).get_variable_to_shape_map()
    return any(name.startswith(OD_API_MARKERS) for name in names)


def variable_names(local_prefix: str) -> set[str]:
    """The variable names a checkpoint holds (its index only: nothing is restored)."""
    import tensorflow as tf

    return set(tf.train.load_checkpoint(local_prefix).get_variable_to_shape_map())


def stage_resume(storage: Storage, run_dir: str, dest: Path) -> tuple[int, str] | None:
    """The newest verified checkpoint of ``run_dir`` as ``(step, local prefix)``; None when the
    run directory has no checkpoint. ``LATEST`` is repaired when it named another step; a run
    directory whose checkpoints are all unreadable is refused rather than started over (that
    would overwrite them)."""
    hint = latest_step(storage, run_dir)
    steps = complete_steps(storage, run_dir)
    if not steps:
        if hint is not None:
            raise CheckpointError(f"{checkpoints_dir(run_dir)}: LATEST names ckpt-{hint} but no "
                                  "complete checkpoint exists; refusing to start over in a run "
                                  "directory that has one (use another runDir)")
        return None
    if hint not in steps:
        log.warning("checkpoints/LATEST (%s) names no complete checkpoint; looking at %s",
                    "unreadable" if hint is None else f"ckpt-{hint}",
                    ", ".join(f"ckpt-{s}" for s in steps))
    for step in steps:
        local = dest / f"ckpt-{step}"
        try:
            prefix = stage(storage, join(checkpoints_dir(run_dir), f"ckpt-{step}"), local)
            verify(prefix)
        except (CheckpointError, StorageError) as err:
            log.warning("ckpt-%d of %s cannot be read (%s); trying the one before", step,
                        run_dir, err)
            shutil.rmtree(local, ignore_errors=True)
            continue
        return step, prefix
    raise CheckpointError(f"{checkpoints_dir(run_dir)}: none of "
                          f"{', '.join(f'ckpt-{s}' for s in steps)} can be read; refusing to start "
                          "over and overwrite them (move them away or use another runDir)")


def repair_pointer(storage: Storage, run_dir: str, step: int) -> None:
    """Point ``LATEST`` at ``step`` (the verified checkpoint a run resumed from)."""
    if latest_step(storage, run_dir) != step:
        log.warning("checkpoints/LATEST now names ckpt-%d, the newest readable checkpoint", step)
        storage.write_text(join(run_dir, contract.RUN_CHECKPOINT_POINTER), f"{step}\n")


def resolve_prefix(storage: Storage, uri: str) -> str:
    """A checkpoint given as a prefix (``…/ckpt-5``), a run directory or a ``checkpoints/`` dir."""
    for base in (uri, join(uri, contract.RUN_CHECKPOINTS)):
        pointer = join(base, "LATEST")
        if storage.exists(pointer):
            step = storage.read_text(pointer).strip()
            return join(base, f"ckpt-{step}")
    if not is_gcs(uri) and Path(uri).is_dir():
        import tensorflow as tf

        found = tf.train.latest_checkpoint(uri)
        if found:
            return found
    return uri


def stage(storage: Storage, prefix: str, dest: Path) -> str:
    """Download the files of checkpoint ``prefix``; return the local prefix to restore from."""
    parent, _, stem = prefix.rstrip("/").rpartition("/")
    files = [u for u in storage.glob(join(parent, stem + ".*"))
             if u.endswith(".index") or ".data-" in u]
    if not any(u.endswith(".index") for u in files):
        raise StorageError(f"checkpoint {prefix}: no {stem}.index found")
    storage.download_many(files, dest)
    return str(dest / stem)


class PublishError(RetryableError):
    """A checkpoint could not be published (storage unreachable beyond the retry deadline,
    read-only, ...). Retryable: the job restarts from the newest published checkpoint."""


class Publisher:
    """Uploads checkpoints from the chief in the background while training goes on."""

    def __init__(self, storage: Storage, run_dir: str, keep: int,
                 staging: Path | None = None) -> None:
        self.storage = storage
        self.target = checkpoints_dir(run_dir)
        self.run_dir = run_dir
        self.keep = keep
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        self._pending: list[Future[None]] = []
        # Hard-linked snapshots, so inside the run's scratch directory (same file system).
        if staging is None:
            staging = Path(tempfile.mkdtemp(prefix="publish-"))
        staging.mkdir(parents=True, exist_ok=True)
        self._staging = staging

    def publish(self, local_prefix: str, step: int, extra_dirs: dict[str, Path] | None = None
                ) -> Future[None]:
        """Snapshot ``local_prefix``'s files now and upload them as ``ckpt-<step>`` later.

        At most one checkpoint is in flight: this first waits for the previous upload (which
        had the training steps since to finish) and raises ``PublishError`` if it failed, so a
        storage failure surfaces at the next checkpoint instead of at the end of training."""
        self.wait()
        snap = self._staging / str(step)
        snap.mkdir(parents=True, exist_ok=True)
        local = Path(local_prefix)
        files = []
        for path in local.parent.glob(local.name + ".*"):
            suffix = path.name[len(local.name) + 1:]
            if suffix == "index" or suffix.startswith("data-"):
                copy = snap / f"ckpt-{step}.{suffix}"
                try:
                    os.link(path, copy)  # cheap, and safe if TF deletes the original later
                except OSError:
                    shutil.copyfile(path, copy)
                files.append(copy)
        future = self._pool.submit(self._upload, files, step, dict(extra_dirs or {}), snap)
        self._pending.append(future)
        return future

    def _upload(self, files: list[Path], step: int, extra_dirs: dict[str, Path],
                snap: Path) -> None:
        data = [(f, join(self.target, f.name)) for f in files if ".data-" in f.name]
        index = [(f, join(self.target, f.name)) for f in files if f.name.endswith(".index")]
        newer = latest_step(self.storage, self.run_dir)
        if newer is not None and newer > step:
            raise PublishError(f"{self.target} already has ckpt-{newer}, newer than ckpt-{step}: "
                               "another run is writing this run directory; not overwriting it")
        self.storage.upload_many(data)
        self.storage.upload_many(index)
        self.storage.write_text(join(self.run_dir, contract.RUN_CHECKPOINT_POINTER), f"{step}\n")
        for name, directory in extra_dirs.items():
            self.storage.upload_tree(directory, join(self.run_dir, name))
        shutil.rmtree(snap, ignore_errors=True)
        self._prune(step)
        log.info("published checkpoint ckpt-%d to %s", step, self.target)

    def _prune(self, newest: int) -> None:
        steps: dict[int, list[str]] = {}
        for uri in self.storage.list_prefix(self.target):
            match = CKPT_FILE.search(uri)
            if match:
                steps.setdefault(int(match[1]), []).append(uri)
        keep = sorted(s for s in steps if s <= newest)[-self.keep:]
        for step, uris in steps.items():
            if step not in keep and step < newest:
                for uri in sorted(uris, key=lambda u: not u.endswith(".index")):
                    self.storage.delete(uri)  # index first: a half-deleted one is unreadable

    def _result(self, future: Future[None]) -> None:
        try:
            future.result()
        except Exception as err:
            raise PublishError(f"publishing a checkpoint to {self.target} failed: "
                               f"{type(err).__name__}: {first_line(err, 300)}") from err

    def wait(self) -> None:
        """Block until every upload has finished; ``PublishError`` for the first failure."""
        pending, self._pending = self._pending, []
        for future in pending:
            self._result(future)

    def close(self) -> None:
        """Finish uploads and stop the thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
            shutil.rmtree(self._staging, ignore_errors=True)
