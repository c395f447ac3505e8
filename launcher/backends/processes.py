"""Run a rendered Job as local processes: one per completion index, on 127.0.0.1.

This executes the Job object itself (its command, args and env, ``$(VAR)`` expanded as the kubelet
does), not a parallel code path, and applies the same exit-code contract as its podFailurePolicy:
42 and 43 (and deaths by signal) restart the whole group, 1 stops everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from launcher.errors import LauncherError
from trainer import contract

VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

# Workers must not outlive the launcher, however it ends (SIGKILL included): on Linux a tiny
# exec shim asks the kernel for SIGKILL when the parent dies (PR_SET_PDEATHSIG, kept across
# exec), then checks the parent did not die before that, then becomes the worker.
_SHIM = """
import ctypes, os, signal, sys
if sys.platform == "linux":
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    sys.exit(128 + signal.SIGKILL)
os.execvp(sys.argv[2], sys.argv[2:])
"""
DIE_WITH_PARENT = [sys.executable, "-c", _SHIM]


class LocalRunError(LauncherError):
    """The local run failed; ``exit_code`` is what the launcher exits with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class WorkerCommand:
    """How to start one worker process."""

    index: int
    argv: list[str]
    env: dict[str, str]


@dataclass
class Attempt:
    """Outcome of one run of the whole group."""

    codes: dict[int, int] = field(default_factory=dict)
    first_failure: int | None = None  # index of the worker that failed first
    last_lines: dict[int, str] = field(default_factory=dict)


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _expand(value: str, env: dict[str, str]) -> str:
    """``$(VAR)`` expansion as the kubelet does it: ``$$`` is a literal ``$``, and a reference
    to an undefined variable stays as written."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        match = VAR_REF.match(value, i)
        if match:
            out.append(env.get(match[1], match[0]))
            i = match.end()
            continue
        out.append(value[i])
        i += 1
    return "".join(out)


def worker_commands(job: dict[str, Any], ports: list[int],
                    base_env: dict[str, str] | None = None) -> list[WorkerCommand]:
    """The process of each index of ``job``, with its pod env and a loopback ``TF_CONFIG``."""
    spec = job["spec"]
    container = spec["template"]["spec"]["containers"][0]
    workers = int(spec["completions"])
    hosts = [f"127.0.0.1:{p}" for p in ports[:workers]]
    commands = []
    for index in range(workers):
        env = dict(os.environ if base_env is None else base_env)
        pod_env: dict[str, str] = {}
        for var in container.get("env", []):
            if var["name"] == contract.ENV_INDEX:
                value = str(index)
            elif var["name"] == contract.ENV_TF_CONFIG:
                value = json.dumps(contract.tf_config(hosts, index))
            elif var["name"] == "HOME":
                continue  # the pod's scratch volume; keep the user's home locally
            elif var["name"] == "GOOGLE_APPLICATION_CREDENTIALS" and \
                    var.get("value", "").startswith(contract.KEY_SECRET_MOUNT):
                continue  # the pod's mounted Secret; locally the user's own credentials
            elif "value" in var:
                value = _expand(var["value"], pod_env)
            else:
                continue  # secret / field references have no local meaning
            pod_env[var["name"]] = value
        env.update(pod_env)
        # No GCE metadata server locally: the preemption handler would wait 5 s probing it.
        env.setdefault("GCE_METADATA_IP", "127.0.0.1:1")
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
        env.setdefault("TF_NUM_INTEROP_THREADS", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        argv = [_expand(a, pod_env) for a in container.get("command", []) +
                container.get("args", [])]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable  # the image's python is this environment's
        commands.append(WorkerCommand(index, argv, env))
    return commands


class Group:
    """One attempt: N worker processes, each in its own session so they can be killed whole."""

    def __init__(self, commands: list[WorkerCommand], out: TextIO) -> None:
        self.commands = commands
        self.out = out
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.attempt = Attempt()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.scratch: Path | None = None

    def start(self) -> None:
        # Each worker's temporary files (the trainer's scratch: staged shards, checkpoints,
        # export) live under one directory that this attempt removes, however workers end.
        self.scratch = Path(tempfile.mkdtemp(prefix="launcher-run-"))
        for cmd in self.commands:
            tmp = self.scratch / str(cmd.index)
            tmp.mkdir()
            env = {**cmd.env, "TMPDIR": str(tmp), "TRAINER_SCRATCH": str(tmp)}
            proc = subprocess.Popen([*DIE_WITH_PARENT, str(os.getpid()), *cmd.argv], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1, start_new_session=True)
            self.procs[cmd.index] = proc
            self._print(cmd.index, f"started (pid {proc.pid})")
            thread = threading.Thread(target=self._pump, args=(cmd.index, proc), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _print(self, index: int, line: str) -> None:
        with self._lock:
            self.out.write(f"[{index}] {line}\n")
            self.out.flush()

    def _pump(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if "error" in line.lower():
                self.attempt.last_lines[index] = line
            self._print(index, line)

    def poll(self) -> bool:
        """Record exits; True once every worker has exited."""
        for index, proc in self.procs.items():
            code = proc.poll()
            if code is not None and index not in self.attempt.codes:
                code = 128 - code if code < 0 else code  # killed by signal n: 128+n, as in pods
                self.attempt.codes[index] = code
                if code != 0 and self.attempt.first_failure is None:
                    self.attempt.first_failure = index
                self._print(index, f"exited with code {code}")
        return len(self.attempt.codes) == len(self.procs)

    def signal_all(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)

    def stop(self, grace: float) -> None:
        """SIGTERM every worker's session, SIGKILL what is left after ``grace`` seconds."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not self.poll():
            time.sleep(0.1)
        self.signal_all(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # grandchildren left in the session
        self.poll()
        for thread in self._threads:
            thread.join(timeout=2)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _classify(code: int) -> str:
    if code == contract.EXIT_OK:
        return "ok"
    if code == contract.EXIT_PEER_LOST:
        return "peer-lost"
    if code == contract.EXIT_RETRYABLE or 128 <= code <= 255:
        return "retry"
    return "fail"


@dataclass
class LocalRunner:
    """Runs the group, restarting it on retryable exits within the retry budget."""

    job: dict[str, Any]
    retries: int
    grace: float = 30.0
    out: TextIO = sys.stdout
    poll_interval: float = 0.2
    on_start: Callable[[Group], None] | None = None

    def run(self) -> int:
        """Run to the end; returns 0 or raises ``LocalRunError``."""
        counted = 0
        attempt_no = 0
        while True:
            attempt_no += 1
            ports = free_ports(int(self.job["spec"]["completions"]))
            group = Group(worker_commands(self.job, ports), self.out)
            result = self._run_once(group)
            kinds = {i: _classify(c) for i, c in result.codes.items()}
            if all(k == "ok" for k in kinds.values()):
                return 0
            failed = [i for i, k in kinds.items() if k == "fail"]
            if failed:
                index = result.first_failure if result.first_failure in failed else failed[0]
                line = result.last_lines.get(index, "")
                raise LocalRunError(f"worker {index} exited with code {result.codes[index]}"
                                    + (f": {line.strip()}" if line else ""))
            if any(k == "retry" for k in kinds.values()):
                counted += 1
            if counted > self.retries:
                raise LocalRunError(f"retry budget exhausted after {attempt_no} attempts "
                                    f"(exit codes {result.codes})")
            self.out.write(f"[launcher] attempt {attempt_no} ended with exit codes "
                           f"{result.codes}; restarting all workers "
                           f"({counted}/{self.retries} retries used)\n")
            self.out.flush()

    def _run_once(self, group: Group) -> Attempt:
        group.start()
        if self.on_start is not None:
            self.on_start(group)
        broken_at: float | None = None
        try:
            while not group.poll():
                # One worker down breaks the synchronous group. Its peers notice within seconds
                # (coordinated preemption save and exit 42, or exit 43 on a lost collective);
                # whoever is still running after the grace period is stopped.
                if broken_at is None and any(c != 0 for c in group.attempt.codes.values()):
                    broken_at = time.monotonic()
                if broken_at is not None and time.monotonic() - broken_at > self.grace:
                    group.stop(5.0)
                    break
                time.sleep(self.poll_interval)
        except BaseException:
            group.stop(min(self.grace, 10.0))
            raise
        group.stop(0)
        return group.attempt


def run_local(job: dict[str, Any], retries: int, grace: float = 30.0,
              out: TextIO = sys.stdout, on_start: Callable[[Group], None] | None = None) -> int:
    """Run ``job`` locally; Ctrl-C (SIGINT) and SIGTERM stop every worker and exit 130/143.
    ``on_start`` sees each attempt's group of workers once they are started."""
    runner = LocalRunner(job, retries=retries, grace=grace, out=out, on_start=on_start)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signum)

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return runner.run()
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args else signal.SIGINT
        raise LocalRunError("interrupted: all workers stopped", 128 + int(signum)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

