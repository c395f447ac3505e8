"""trainer.run.storage and checkpoint publishing against the GCS emulator, through the real
client."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import BUCKET
from trainer.run import checkpoints
from trainer.run.storage import Storage, StorageError

pytestmark = pytest.mark.integration


def _put(gcs: Storage, tmp_path: Path, uri: str, text: str) -> None:
    local = tmp_path / "f"
    local.write_text(text)
    gcs.upload(local, uri)


def test_glob_matches_od_api_shard_patterns(gcs: Storage, tmp_path: Path) -> None:
    base = f"gs://{BUCKET}/globs"
    for name in ("train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
                 "train-extra.tfrecord", "val-00000-of-00001.tfrecord"):
        _put(gcs, tmp_path, f"{base}/{name}", name)
    assert gcs.glob(f"{base}/train-?????-of-00002.tfrecord") == [
        f"{base}/train-00000-of-00002.tfrecord", f"{base}/train-00001-of-00002.tfrecord"]
    assert len(gcs.glob(f"{base}/train-*")) == 3
    assert gcs.glob(f"{base}/val-00000-of-00001.tfrecord") == [
        f"{base}/val-00000-of-00001.tfrecord"]
    assert gcs.glob(f"{base}/nothing-*") == []


def test_parallel_download_and_missing_objects(gcs: Storage, tmp_path: Path) -> None:
    uris = [f"gs://{BUCKET}/dl/part-{i}" for i in range(12)]
    for i, uri in enumerate(uris):
        _put(gcs, tmp_path, uri, f"payload {i}")
    paths = gcs.download_many(uris, tmp_path / "out")
    assert [p.read_text() for p in paths] == [f"payload {i}" for i in range(12)]
    with pytest.raises(StorageError, match="not found"):
        gcs.read_text(f"gs://{BUCKET}/dl/missing")
    with pytest.raises(StorageError, match="not found"):
        gcs.download(f"gs://{BUCKET}/dl/missing", tmp_path / "missing")


@pytest.mark.parametrize("where", ["gcs", "local"])
def test_a_tree_downloads_as_it_was_uploaded(gcs: Storage, tmp_path: Path, where: str) -> None:
    """A SavedModel-shaped directory: nested files keep their relative paths both ways."""
    tree = tmp_path / "saved_model"
    for name in ("saved_model.pb", "variables/variables.index",
                 "variables/variables.data-00000-of-00001", "assets/vocab.txt"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(f"content of {name}")
    uri = f"gs://{BUCKET}/tree/saved_model" if where == "gcs" else str(tmp_path / "copy")
    gcs.upload_tree(tree, uri)
    paths = gcs.download_tree(uri + "/", tmp_path / "back")
    got = {str(p.relative_to(tmp_path / "back")): p.read_text() for p in paths}
    assert got == {str(p.relative_to(tree)): p.read_text() for p in tree.rglob("*")
                   if p.is_file()}
    assert gcs.download_tree(f"{uri}-missing", tmp_path / "none") == []


def _fake_checkpoint(directory: Path, name: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.index").write_text(f"index of {name}")
    (directory / f"{name}.data-00000-of-00001").write_text(f"data of {name}")
    return str(directory / name)


def test_publisher_points_latest_at_complete_checkpoints_and_prunes(gcs: Storage,
                                                                   tmp_path: Path) -> None:
    run_dir = f"gs://{BUCKET}/pub-run"
    publisher = checkpoints.Publisher(gcs, run_dir, keep=2)
    assert checkpoints.latest_step(gcs, run_dir) is None
    for step in (10, 20, 30):
        prefix = _fake_checkpoint(tmp_path / "local", f"ckpt-{step}")
        publisher.publish(prefix, step)
        Path(prefix + ".index").unlink()  # TF may rotate local files right after: snapshot kept
    publisher.close()
    assert checkpoints.latest_step(gcs, run_dir) == 30
    names = sorted(u.rsplit("/", 1)[1] for u in gcs.list_prefix(f"{run_dir}/checkpoints"))
    assert names == ["LATEST", "ckpt-20.data-00000-of-00001", "ckpt-20.index",
                     "ckpt-30.data-00000-of-00001", "ckpt-30.index"]
    assert gcs.read_text(f"{run_dir}/checkpoints/ckpt-30.index") == "index of ckpt-30"
    staged = checkpoints.stage(gcs, checkpoints.resolve_prefix(gcs, run_dir), tmp_path / "st")
    assert Path(staged).name == "ckpt-30"
    assert Path(staged + ".data-00000-of-00001").read_text() == "data of ckpt-30"


def test_stage_of_a_missing_checkpoint_names_it(gcs: Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"no ckpt-7\.index found"):
        checkpoints.stage(gcs, f"gs://{BUCKET}/nowhere/ckpt-7", tmp_path)
