"""run-local's process group against the exit-code contract, with small Python workers standing in
for the trainer (the real trainer runs in tests/integration)."""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.backends.processes import LocalRunError, LocalRunner, worker_commands
from launcher.render import job_object, render
from launcher.spec import build_spec
from tests.conftest import BASE_SPEC
from trainer import contract

# A worker that follows a per-index script of exit codes, one per attempt; it logs its attempt
# and, for "hang", sleeps until signalled.
WORKER = textwrap.dedent("""
    import json, os, sys, time
    state = os.environ["STATE_DIR"]
    index = int(os.environ["JOB_COMPLETION_INDEX"])
    tf_config = json.loads(os.environ["TF_CONFIG"])
    assert tf_config["task"]["index"] == index
    counter = os.path.join(state, f"attempts-{index}")
    attempt = len(open(counter).read()) if os.path.exists(counter) else 0
    open(counter, "a").write("x")
    plan = json.loads(os.environ["PLAN"])[str(index)]
    action = plan[min(attempt, len(plan) - 1)]
    print(f"attempt {attempt} index {index} action {action}", flush=True)
    if action == "hang":
        open(os.path.join(state, f"pid-{index}"), "w").write(str(os.getpid()))
        time.sleep(600)
    if action == "error":
        print("error: something the user must fix", flush=True)
        sys.exit(1)
    sys.exit(int(action))
""")


def _job(tmp_path: Path, plan: dict[str, list[str]], workers: int = 2,
         retries: int = 3) -> dict[str, Any]:
    raw = copy.deepcopy(BASE_SPEC)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    raw.update(workers=workers, command=["python", str(script)], args=[],
               env={"STATE_DIR": str(tmp_path), "PLAN": json.dumps(plan)},
               scheduling={"retriesPerIndex": retries})
    raw["training"]["globalBatchSize"] = 8 * workers
    return job_object(render(build_spec(raw)))


def _attempts(tmp_path: Path, index: int) -> int:
    path = tmp_path / f"attempts-{index}"
    return len(path.read_text()) if path.exists() else 0


def test_worker_commands_expand_index_and_loopback_tf_config(tmp_path: Path) -> None:
    job = _job(tmp_path, {"0": ["0"], "1": ["0"]})
    commands = worker_commands(job, [5000, 5001], base_env={})
    assert [c.index for c in commands] == [0, 1]
    for cmd in commands:
        assert cmd.env[contract.ENV_INDEX] == str(cmd.index)
        assert json.loads(cmd.env["TF_CONFIG"]) == contract.tf_config(
            ["127.0.0.1:5000", "127.0.0.1:5001"], cmd.index)
        assert cmd.env[contract.ENV_RUN_DIR] == "gs://bucket-a/runs/default/det"
        assert cmd.argv[0] == sys.executable
        assert "HOME" not in cmd.env


def test_all_workers_succeed(tmp_path: Path) -> None:
    out = io.StringIO()
    job = _job(tmp_path, {"0": ["0"], "1": ["0"]})
    assert LocalRunner(job, retries=0, out=out).run() == 0
    text = out.getvalue()
    assert "[0] attempt 0 index 0 action 0" in text
    assert "[1] attempt 0 index 1 action 0" in text


def test_retryable_exit_restarts_the_whole_group(tmp_path: Path) -> None:
    out = io.StringIO()
    job = _job(tmp_path, {"0": ["0", "0"], "1": ["42", "0"]})
    assert LocalRunner(job, retries=3, grace=5, out=out).run() == 0
    assert _attempts(tmp_path, 0) == 2 and _attempts(tmp_path, 1) == 2
    assert "restarting all workers (1/3 retries used)" in out.getvalue()


def test_peer_lost_is_not_counted(tmp_path: Path) -> None:
    out = io.StringIO()
    job = _job(tmp_path, {"0": ["43", "43", "0"], "1": ["43", "43", "0"]})
    assert LocalRunner(job, retries=0, grace=5, out=out).run() == 0
    assert _attempts(tmp_path, 0) == 3


def test_retry_budget_is_enforced(tmp_path: Path) -> None:
    job = _job(tmp_path, {"0": ["0"], "1": ["42"]})
    with pytest.raises(LocalRunError, match="retry budget exhausted after 3 attempts"):
        LocalRunner(job, retries=2, grace=5, out=io.StringIO()).run()
    assert _attempts(tmp_path, 1) == 3


def test_user_error_stops_everyone_and_reports_the_line(tmp_path: Path) -> None:
    job = _job(tmp_path, {"0": ["hang"], "1": ["error"]})
    start = time.monotonic()
    with pytest.raises(LocalRunError) as info:
        LocalRunner(job, retries=3, grace=1, out=io.StringIO()).run()
    assert str(info.value) == ("worker 1 exited with code 1: error: something the user "
                               "must fix")
    assert time.monotonic() - start < 30
    pid = int((tmp_path / "pid-0").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _attempts(tmp_path, 0) == 1  # no restart after a user error


def test_sigint_stops_every_worker(tmp_path: Path) -> None:
    proc, pids = _hanging_run(tmp_path, grace=5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted: all workers stopped" in err
    for pid in pids:
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _hanging_run(tmp_path: Path, grace: int = 60) -> tuple[subprocess.Popen[str], list[int]]:
    """`launcher run-local` (a process of its own) with two workers that hang; their PIDs."""
    spec = copy.deepcopy(BASE_SPEC)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    spec.update(workers=2, command=["python", str(script)], args=[], runDir=str(tmp_path / "r"),
                env={"STATE_DIR": str(tmp_path),
                     "PLAN": json.dumps({"0": ["hang"], "1": ["hang"]})},
                scheduling={"terminationGracePeriodSeconds": grace})
    spec["training"]["globalBatchSize"] = 16
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run-local", str(spec_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"pid-{i}").exists() for i in (0, 1)):
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.1)
    return proc, [int((tmp_path / f"pid-{i}").read_text()) for i in (0, 1)]


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux-only")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_workers_die_with_their_launcher(tmp_path: Path, sig: int) -> None:
    proc, pids = _hanging_run(tmp_path)
    assert all(_alive(pid) for pid in pids)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived the launcher"
        time.sleep(0.1)


SCRATCH_WORKER = textwrap.dedent("""
    import os, sys, tempfile
    with open(os.path.join(tempfile.mkdtemp(prefix="trainer-"), "shard"), "w") as f:
        f.write("x")
    print("tmp", tempfile.gettempdir(), "home", os.environ["HOME"], "creds",
          os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"), "literal", sys.argv[1], flush=True)
    sys.exit(int(os.environ["CODE"]))
""")


@pytest.mark.parametrize("code", ["0", "1"])
def test_each_attempt_leaves_no_scratch_and_keeps_local_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    raw = copy.deepcopy(BASE_SPEC)
    script = tmp_path / "worker.py"
    script.write_text(SCRATCH_WORKER)
    raw.update(workers=2, command=["python", str(script)], args=["$$(JOB_COMPLETION_INDEX)"],
               env={"CODE": code}, auth={"keySecret": "gcs-key"})
    raw["training"]["globalBatchSize"] = 16
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "mine.json"))
    out = io.StringIO()
    runner = LocalRunner(job_object(render(build_spec(raw))), retries=0, grace=5, out=out)
    if code == "0":
        runner.run()
    else:
        with pytest.raises(LocalRunError):
            runner.run()
    lines = [line.split() for line in out.getvalue().splitlines() if " tmp " in line]
    assert len(lines) == 2
    for words in lines:
        tmp = Path(words[2])
        assert tmp.name in ("0", "1") and tmp.parent.name.startswith("launcher-run-")
        assert not tmp.parent.exists(), "the attempt's scratch directory was left behind"
        assert words[6] == str(tmp_path / "mine.json")  # not the pod's /var/secrets path
        assert words[8] == "$(JOB_COMPLETION_INDEX)"  # $$ escapes, as the kubelet does
