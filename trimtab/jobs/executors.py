"""Where a job's command runs: a local process group, or a Ray cluster (:mod:`.cluster`).

An executor starts a command, says whether it still runs and stops it; nothing else. What the
job did is read from its run folder (``run.json``, ``metrics.jsonl``, checkpoints), which both
executors share, so a scheduler that restarts can poll and stop a job from the handle it
stored alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from trimtab.files import pid_alive

RUNNING = None  # poll() while the command runs
UNKNOWN = -1  # poll() of a command whose outcome cannot be known (not our child, or gone)


@dataclass(frozen=True)
class Launch:
    """One start of a job's command."""

    job_id: str
    attempt: int  # 1 for the first start; each retry or resume counts up
    argv: list[str]  # the command
    cwd: Path
    log: Path  # stdout and stderr go here (appended)
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    cpus: float = 1.0
    gpus: float = 0.0


class Executor(Protocol):
    """Starts, polls and stops commands; handles are strings a store keeps across restarts."""

    name: str

    def start(self, launch: Launch) -> str:
        """Start the command; return a handle to store."""
        ...

    def poll(self, handle: str) -> int | None:
        """None while running; else an exit code (0 success; -1 when unknown)."""
        ...

    def stop(self, handle: str, grace: float = 10.0) -> None:
        """End the command and everything it started; return once it has ended."""
        ...


class LocalExecutor:
    """Each job its own process group (``start_new_session``): a cancel ends the trainer and
    every process it started (data-parallel ranks under torchrun included), and a job outlives
    a server killed under it, so the next server adopts it instead of starting it again.

    The handle is ``"<pid>"``: the process group id is the pid (a new session). Exit codes are
    known for this process's own children; a process adopted after a restart is not ours to
    wait for, so its end reads as :data:`UNKNOWN` and the run folder says how it went.
    """

    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, launch: Launch) -> str:
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        with open(launch.log, "ab") as log:
            child = subprocess.Popen(
                launch.argv,
                cwd=launch.cwd,
                env=os.environ | launch.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[child.pid] = child
        return str(child.pid)

    def poll(self, handle: str) -> int | None:
        pid = int(handle)
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return RUNNING
            del self._children[pid]
            # A signal death is -N from Popen: report it as a shell would (128 + N).
            return code if code >= 0 else 128 - code
        return RUNNING if pid_alive(pid) else UNKNOWN

    def stop(self, handle: str, grace: float = 10.0) -> None:
        """SIGTERM to the whole group, SIGKILL to whatever is left after ``grace`` seconds."""
        pid = int(handle)
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pid):
            self.poll(handle)  # reaps our own child, so it stops counting as alive
            time.sleep(0.05)
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while _group_alive(pid) and time.monotonic() < deadline + 5:
                self.poll(handle)
                time.sleep(0.05)
        self.poll(handle)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (from /proc; zombies left out)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


__all__ = ["RUNNING", "UNKNOWN", "Executor", "Launch", "LocalExecutor", "group_members"]
