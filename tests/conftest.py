"""Shared fixtures: valid spec mappings that tests vary."""

from __future__ import annotations

import copy
from typing import Any

import pytest

BASE_SPEC: dict[str, Any] = {
    "name": "det",
    "runDir": "gs://bucket-a/runs",
    "model": {"checkpoint": "gs://bucket-a/ckpt/ckpt-0",
              "labelMap": "gs://bucket-a/data/label_map.pbtxt"},
    "data": {"train": ["gs://bucket-a/data/train-?????-of-00010.tfrecord"],
             "eval": ["gs://bucket-a/data/val-*.tfrecord"]},
    "training": {"steps": 100, "globalBatchSize": 8, "checkpointEvery": 10},
}


@pytest.fixture
def base_spec() -> dict[str, Any]:
    """A fresh copy of a valid spec (generic profile, 2 workers)."""
    return copy.deepcopy(BASE_SPEC)


@pytest.fixture(autouse=True)
def local_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test's own state directory for the local backend's job records (and that of the
    processes it starts), never the user's."""
    path = tmp_path_factory.mktemp("launcher-state")
    monkeypatch.setenv("LAUNCHER_STATE_DIR", str(path))
    return path
