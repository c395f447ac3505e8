"""The local backend behind the same verbs as the cluster: a job run by `launcher run-local` is
then seen by `status`, `logs`, `list` and `delete --local`, with small Python workers standing in
for the trainer."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from launcher.cli import app
from tests.conftest import BASE_SPEC
from trainer import contract

runner = CliRunner()
WORKER = textwrap.dedent("""
    import os, sys
    index = int(os.environ["JOB_COMPLETION_INDEX"])
    print(f"hello from {index}", flush=True)
    sys.exit(int(os.environ["EXIT_CODES"].split(",")[index]))
""")


def _spec_file(tmp_path: Path, codes: str) -> Path:
    raw: dict[str, Any] = copy.deepcopy(BASE_SPEC)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    raw.update(workers=2, runDir=str(tmp_path / "runs"), command=["python", str(script)],
               args=["--steps=7"], env={"EXIT_CODES": codes}, scheduling={"retriesPerIndex": 0})
    raw["training"]["globalBatchSize"] = 16
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _json(args: list[str]) -> Any:
    result = runner.invoke(app, [*args, "--local", "-o", "json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_a_local_run_is_seen_by_status_logs_list_and_delete(tmp_path: Path) -> None:
    assert runner.invoke(app, ["run-local", str(_spec_file(tmp_path, "0,0"))]).exit_code == 0
    status = _json(["status", "det"])
    assert (status["phase"], status["workers"], status["succeeded"]) == ("Succeeded", 2, 2)
    assert [w["detail"] for w in status["indexes"]] == ["exit 0", "exit 0"]
    assert status["run_dir"] == str(tmp_path / "runs" / "default" / "det")
    logs = runner.invoke(app, ["logs", "det", "--local", "--index", "1"]).stdout.splitlines()
    assert "[1] hello from 1" in logs and not any(line.startswith("[0]") for line in logs)
    assert [row["name"] for row in _json(["list"])] == ["det"]
    run_dir = Path(status["run_dir"])
    record = json.loads((run_dir / contract.RUN_JOB_RECORD).read_text())
    assert record["name"] == "det" and record["uid"]
    deleted = runner.invoke(app, ["delete", "det", "--local", "--purge", "--yes"])
    assert deleted.exit_code == 0, deleted.stderr
    assert not run_dir.exists()
    gone = runner.invoke(app, ["status", "det", "--local"])
    assert gone.exit_code == 1 and "local job default/det not found" in gone.stderr


def test_status_says_what_the_records_held(tmp_path: Path) -> None:
    assert runner.invoke(app, ["run-local", str(_spec_file(tmp_path, "0,0"))]).exit_code == 0
    records = tmp_path / "runs" / "default" / "det" / contract.RUN_RECORDS
    records.mkdir()
    for worker, skipped in ((0, {"bad_box": 2}), (1, {"bad_box": 1, "bad_image": 3})):
        (records / f"train-worker-{worker}.json").write_text(json.dumps(
            {"records": 100, "usable": 100 - sum(skipped.values()), "skipped": skipped,
             "clipped": 4, "files": []}))
    (records / "eval.json").write_text(json.dumps({"records": 20, "usable": 20, "skipped": {}}))
    assert _json(["status", "det"])["records"] == (
        "train 194 of 200 usable (skipped: 3 bad_box, 3 bad_image), 8 with boxes clipped; "
        "eval 20 of 20 usable")
    shown = runner.invoke(app, ["status", "det", "--local"]).stdout
    assert "records: train 194 of 200 usable" in shown


def test_a_failed_local_run_says_why_in_status(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run-local", str(_spec_file(tmp_path, "0,1"))])
    assert result.exit_code == 1
    status = _json(["status", "det"])
    assert status["phase"] == "Failed"
    assert "worker 1 exited with code 1" in status["explanation"]
    assert status["failed_indexes"] == "1"


def test_a_purge_refuses_a_run_directory_of_another_run(tmp_path: Path) -> None:
    spec_file = _spec_file(tmp_path, "0,0")
    assert runner.invoke(app, ["run-local", str(spec_file)]).exit_code == 0
    run_dir = tmp_path / "runs" / "default" / "det"
    record = json.loads((run_dir / contract.RUN_JOB_RECORD).read_text())
    (run_dir / contract.RUN_JOB_RECORD).write_text(json.dumps({**record, "uid": "another"}))
    refused = runner.invoke(app, ["delete", "det", "--local", "--purge", "--yes"])
    assert refused.exit_code == 1 and "does not belong to this job" in refused.stderr
    assert run_dir.exists() and _json(["status", "det"])["phase"] == "Succeeded"
