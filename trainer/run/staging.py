"""What every task does before training: expand the TFRecord globs, pull this worker's shards
(local files are read in place), scan what they hold, and find the run's own newest checkpoint."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import contract
from trainer.config import ConfigError, TrainConfig
from trainer.run import checkpoints
from trainer.run.cluster import ClusterInfo
from trainer.run.storage import Storage, StorageError, is_gcs, join

log = logging.getLogger("trainer")


@dataclass
class Staged:
    """What this worker pulled to local disk."""

    train_files: list[Path]
    eval_files: list[Path] = field(default_factory=list)
    compression: str = ""  # of the train files: "" or "GZIP"
    eval_compression: str = ""
    undecodable: set[int] = field(default_factory=set)  # fingerprints of records to skip
    name_to_id: dict[str, int] | None = None
    # what each scan found, by its file name under the run directory's records/
    reports: dict[str, Any] = field(default_factory=dict)
    init_checkpoint: str | None = None  # local path of what the run fine-tunes from
    resume_checkpoint: str | None = None  # local prefix of the run's own newest checkpoint
    resume_step: int = 0


def expand(storage: Storage, patterns: list[str], flag: str) -> list[str]:
    """Every file the globs match, sorted; a glob that matches nothing is a user error."""
    files: list[str] = []
    for pattern in patterns:
        matched = storage.glob(pattern)
        if not matched:
            raise ConfigError(f"{flag} {pattern}: matches no file")
        files += matched
    return sorted(set(files))


def local(storage: Storage, uris: list[str], dest: Path) -> list[Path]:
    """Local paths of ``uris``: local files as they are (absolute), gs:// ones downloaded. A
    local file the glob matched that cannot be read (a dangling link, gone since) is a
    ``StorageError`` naming it."""
    if not any(is_gcs(u) for u in uris):
        missing = [u for u in uris if not Path(u).is_file()]
        if missing:
            raise StorageError(f"{missing[0]}: matched by the glob but not a readable file")
        return [Path(u).resolve() for u in uris]
    return storage.download_many(uris, dest)


# scan(paths) -> records.ScanReport
Scan = Callable[[list[Path]], Any]


def stage_records(cfg: TrainConfig, storage: Storage, cluster: ClusterInfo, scratch: Path,
                  scan: Scan) -> Staged:
    """Pull this worker's shards (and the eval files on the chief) and check them with
    ``scan``: counts per file and reason are logged, too many faults end the job."""
    files = expand(storage, cfg.train, "--train")
    workers = max(cluster.num_workers, 1)
    if len(files) < workers:
        raise ConfigError(f"--train: {len(files)} TFRecord files for {workers} workers; "
                          "each worker needs at least one shard")
    staged = Staged(local(storage, files[cluster.index::workers], scratch / "train"))
    staged.compression = _checked(staged, staged.train_files, scan, cfg,
                                  f"worker {cluster.index} --train",
                                  f"train-worker-{cluster.index}.json")
    if cfg.eval and cluster.is_chief:
        staged.eval_files = local(storage, expand(storage, cfg.eval, "--eval"),
                                  scratch / "eval")
        staged.eval_compression = _checked(staged, staged.eval_files, scan, cfg, "--eval",
                                           "eval.json")
    return staged


def _checked(staged: Staged, paths: list[Path], scan: Scan, cfg: TrainConfig,
             what: str, record: str) -> str:
    """Scan the records (damaged images noted in ``staged``, the report kept as ``record``
    for ``write_reports``) and say what they hold in the log; their compression."""
    from trainer.detection import records

    report = scan(paths)
    log.info("%s: %s", what, report.summary())
    records.check(report, cfg.max_skipped_fraction, what)
    staged.reports[record] = report
    staged.undecodable |= report.undecodable()
    return "GZIP" if report.compressed else ""


def write_reports(cfg: TrainConfig, storage: Storage, staged: Staged) -> None:
    """What this worker's scans found, per file and reason, into the run directory's
    ``records/`` (once the job runs: a refused job writes nothing)."""
    for name, report in staged.reports.items():
        storage.write_text(join(cfg.run_dir, contract.RUN_RECORDS, name),
                           json.dumps(report.to_dict(), indent=2) + "\n")


def stage_resume(cfg: TrainConfig, storage: Storage, cluster: ClusterInfo,
                 scratch: Path) -> tuple[int, str] | None:
    """The run's own newest complete checkpoint as ``(step, local prefix)``, if any
    (``LATEST`` repaired by the chief)."""
    resume = checkpoints.stage_resume(storage, cfg.run_dir, scratch / "resume")
    if resume is not None and cluster.is_chief:
        checkpoints.repair_pointer(storage, cfg.run_dir, resume[0])
    return resume


def restore(checkpoint: Any, prefix: str, what: str) -> None:
    """Read a checkpoint; a mismatch names ``what`` (the user's URI) and the variable."""
    try:
        checkpoint.read(prefix).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as err:
        from trainer.text import first_line

        raise ConfigError(f"{what} does not fit this model: {first_line(err, 300)}") from None
