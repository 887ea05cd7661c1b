"""The Ray executor against a real single-node Ray head on 127.0.0.1 (one head for the module).

Without ray[default] the cluster tests skip, unless TRIMTAB_REQUIRE_RAY=1 (CI) makes that a
failure; the pure tests (argv rewrite, entrypoint) run either way.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trimtab.errors import TrimtabError
from trimtab.jobs.cluster import (
    STOPPED,
    RayExecutor,
    distributed_argv,
    entrypoint,
    submission_id,
)
from trimtab.jobs.executors import RUNNING, UNKNOWN, Launch

PY = sys.executable
HEAD_START_TIMEOUT = 90.0


@dataclass
class Head:
    """A running head: its Jobs API address and the marker its jobs carry in their argv."""

    address: str
    temp_dir: Path
    started_in: float  # seconds from `ray start` to a dashboard that answers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_missing() -> str | None:
    """Why the cluster tests cannot run here, or None."""
    for module in ("ray", "aiohttp"):  # aiohttp: the dashboard, from ray[default]
        if importlib.util.find_spec(module) is None:
            return f"ray[default] is not installed (no {module}): pip install 'trimtab[ray]'"
    if not (Path(PY).parent / "ray").exists():
        return f"no `ray` command beside {PY}"
    return None


def _head_argv(temp_dir: Path, dashboard_port: int) -> list[str]:
    # Every port chosen here, bound to loopback, so that the head neither collides with
    # another one on this machine nor listens beyond it.
    ports = {
        "--port": _free_port(),
        "--dashboard-port": dashboard_port,
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--metrics-export-port": _free_port(),
        "--node-manager-port": _free_port(),
        "--object-manager-port": _free_port(),
        "--ray-client-server-port": _free_port(),
    }
    return [
        str(Path(PY).parent / "ray"),
        "start",
        "--head",
        "--block",  # this process owns the head: SIGTERM to it ends every process it started
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=true",
        "--disable-usage-stats",
        "--object-store-memory=100000000",
        f"--temp-dir={temp_dir}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]


def _wait_for_dashboard(address: str, head: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + HEAD_START_TIMEOUT
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the Ray dashboard did not answer in {HEAD_START_TIMEOUT} s")


def _processes_mentioning(*texts: str) -> list[int]:
    """Live processes (zombies left out) whose command line contains every one of ``texts``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and all(t in cmdline for t in texts):
            found.append(int(entry.name))
    return found


def _stop_head(head: subprocess.Popen[bytes], temp_dir: Path) -> list[int]:
    """End the head (and so its processes); return the pids of ours still alive after it."""
    head.terminate()
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait(10)
    deadline = time.monotonic() + 10
    while (left := _processes_mentioning(str(temp_dir))) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:  # ours alone: their command lines name this head's temp dir
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """A real single-node Ray head on 127.0.0.1, started once for the module."""
    missing = _ray_missing()
    if missing is not None:
        if os.environ.get("TRIMTAB_REQUIRE_RAY") == "1":
            pytest.fail(f"TRIMTAB_REQUIRE_RAY=1 but {missing}")
        pytest.skip(missing)
    # Short: Ray's unix sockets live below it and their paths must stay under 107 chars.
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    log = temp_dir.with_suffix(".log")
    dashboard_port = _free_port()
    env = os.environ | {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _head_argv(temp_dir, dashboard_port),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_dashboard(address, proc, log)
        started_in = time.monotonic() - started
        print(f"\nRay head answered {started_in:.1f} s after `ray start`")
        yield Head(address, temp_dir, started_in)
    finally:
        left = _stop_head(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.unlink(missing_ok=True)
    assert not left, f"Ray processes outlived the head: {left}"


def _launch(
    tmp_path: Path,
    head: Head,
    code: str,
    *,
    job_id: str,
    attempt: int = 1,
    env: dict[str, str] | None = None,
    cpus: float = 1.0,
) -> Launch:
    """A Python one-liner as a job; its argv names the head's temp dir (so that the teardown
    finds it if it outlives the head) and the job."""
    argv = [PY, "-c", code, str(head.temp_dir), job_id]
    log = tmp_path / "logs" / f"{job_id}.log"
    return Launch(job_id, attempt, argv, tmp_path, log, env or {}, cpus=cpus)


def _wait(executor: RayExecutor, handle: str, timeout: float = 60.0) -> int | None:
    deadline = time.monotonic() + timeout
    while (code := executor.poll(handle)) is RUNNING and time.monotonic() < deadline:
        time.sleep(0.1)
    return code


def _unique(name: str) -> str:
    return f"{name}-{os.getpid()}-{time.monotonic_ns()}"


SLEEP = "import time; print('sleeping', flush=True); time.sleep(60)"


# ---- on the cluster -----------------------------------------------------------------------


def test_a_command_runs_with_its_env_and_cwd_and_exit_0_is_reported(head: Head, tmp_path: Path):
    code = (
        "import os, pathlib; "
        "pathlib.Path('out.txt').write_text(os.environ['GREETING'] + ' ' + os.environ["
        "'OMP_NUM_THREADS']); print('to the log')"
    )
    launch = _launch(tmp_path, head, code, job_id=_unique("ok"), env={"GREETING": "hi"}, cpus=2)
    executor = RayExecutor(head.address)
    handle = executor.start(launch)
    assert handle == launch.job_id
    assert _wait(executor, handle) == 0
    # cwd: the relative path landed in the job's folder; threads follow the CPUs it holds
    assert (tmp_path / "out.txt").read_text() == "hi 2"
    assert "to the log" in launch.log.read_text()
    assert "Running entrypoint" in executor.logs(handle)


def test_a_failing_command_reports_its_exit_code(head: Head, tmp_path: Path):
    code = "import sys; print('boom', file=sys.stderr); sys.exit(3)"
    launch = _launch(tmp_path, head, code, job_id=_unique("fail"))
    executor = RayExecutor(head.address)
    assert _wait(executor, executor.start(launch)) == 3
    assert "boom" in launch.log.read_text()


def test_a_command_killed_by_a_signal_reports_128_plus_the_signal(head: Head, tmp_path: Path):
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    executor = RayExecutor(head.address)
    handle = executor.start(_launch(tmp_path, head, code, job_id=_unique("killed")))
    assert _wait(executor, handle) == 128 + signal.SIGKILL


def test_stop_ends_a_running_job_and_poll_then_says_stopped(head: Head, tmp_path: Path):
    launch = _launch(tmp_path, head, SLEEP, job_id=_unique("stop"))
    executor = RayExecutor(head.address)
    handle = executor.start(launch)
    _wait_for_output(launch.log, "sleeping")
    assert executor.poll(handle) is RUNNING
    began = time.monotonic()
    executor.stop(handle, grace=5)
    took = time.monotonic() - began
    assert executor.poll(handle) == STOPPED
    assert took < 5, f"stop took {took:.1f} s"
    assert not _processes_mentioning(SLEEP, launch.job_id)


def test_a_job_that_ignores_sigterm_is_killed_after_kill_after(head: Head, tmp_path: Path):
    code = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + SLEEP
    launch = _launch(tmp_path, head, code, job_id=_unique("stubborn"))
    executor = RayExecutor(head.address, kill_after=1)
    handle = executor.start(launch)
    _wait_for_output(launch.log, "sleeping")
    began = time.monotonic()
    executor.stop(handle, grace=0)
    took = time.monotonic() - began
    assert executor.poll(handle) == STOPPED
    assert not _processes_mentioning(SLEEP, launch.job_id)
    print(f"stop of a job ignoring SIGTERM: {took:.2f} s")
    # Ray's own default is 3 s: the job's RAY_JOB_STOP_WAIT_TIME_S=1 is what Ray used
    assert 1 <= took < 2.9, f"stop took {took:.1f} s"


def test_start_of_the_same_job_and_attempt_twice_is_one_ray_job(head: Head, tmp_path: Path):
    code = "open('runs.txt', 'a').write('ran\\n')"
    launch = _launch(tmp_path, head, code, job_id=_unique("twice"))
    executor = RayExecutor(head.address)
    first = executor.start(launch)
    second = RayExecutor(head.address).start(launch)  # as a restarted server would
    assert first == second == launch.job_id
    assert _wait(executor, first) == 0
    jobs = [j for j in executor._client.list_jobs() if j.submission_id == first]
    assert len(jobs) == 1
    assert (tmp_path / "runs.txt").read_text() == "ran\n"


def test_attempt_2_gets_its_own_submission_id(head: Head, tmp_path: Path):
    job_id = _unique("retry")
    executor = RayExecutor(head.address)
    first = executor.start(_launch(tmp_path, head, "pass", job_id=job_id))
    second = executor.start(_launch(tmp_path, head, "pass", job_id=job_id, attempt=2))
    assert (first, second) == (job_id, f"{job_id}-attempt-2")
    assert _wait(executor, first) == 0
    assert _wait(executor, second) == 0


def test_poll_of_an_unknown_handle_is_minus_1(head: Head):
    executor = RayExecutor(head.address)
    assert executor.poll("no-such-job") == UNKNOWN == -1
    executor.stop("no-such-job")  # nothing to stop: returns at once
    assert executor.logs("no-such-job") == ""


def test_a_new_executor_polls_and_stops_a_job_another_started(head: Head, tmp_path: Path):
    launch = _launch(tmp_path, head, SLEEP, job_id=_unique("adopt"))
    handle = RayExecutor(head.address).start(launch)
    after_restart = RayExecutor(head.address)  # nothing in memory but the handle
    _wait_for_output(launch.log, "sleeping")
    assert after_restart.poll(handle) is RUNNING
    after_restart.stop(handle, grace=5)
    assert after_restart.poll(handle) == STOPPED
    assert RayExecutor(head.address).poll(handle) == STOPPED
    assert not _processes_mentioning(SLEEP, launch.job_id)


def _wait_for_output(log: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text():
            return
        time.sleep(0.1)
    pytest.fail(f"{text!r} not in {log} after {timeout} s")


# ---- pure ---------------------------------------------------------------------------------


def test_argv_rewrite_runs_trimtab_under_torchrun_for_more_than_one_gpu():
    argv = [PY, "-m", "trimtab", "train", "/r/config.yaml", "--quiet"]
    assert distributed_argv(argv, 0) == argv
    assert distributed_argv(argv, 1) == argv
    two = distributed_argv(argv, 2.0)
    assert two == [
        PY,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "trimtab",
        "train",
        "/r/config.yaml",
        "--quiet",
    ]
    # torchrun itself reads the flags so: one process per GPU, trimtab as a module
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(two[3:])
    assert (args.standalone, args.nproc_per_node, args.module) == (True, "2", True)
    assert (args.training_script, args.training_script_args) == ("trimtab", argv[3:])


def test_argv_rewrite_leaves_other_commands_and_refuses_fractional_gpus():
    other = ["/bin/echo", "hello"]
    assert distributed_argv(other, 4) == other
    with pytest.raises(TrimtabError, match="whole number"):
        distributed_argv([PY, "-m", "trimtab", "train", "c.yaml"], 2.5)


def test_entrypoint_appends_to_the_log_and_runs_in_cwd_with_quoted_paths(tmp_path: Path):
    folder = tmp_path / "a folder"
    launch = Launch("j", 1, [PY, "-c", "print('it ran')"], folder, folder / "my log.txt")
    command = entrypoint(launch)
    assert command.startswith(f"exec >>{shlex.quote(str(launch.log))} 2>&1; cd ")
    folder.mkdir()
    subprocess.run(["/bin/sh", "-c", command], check=True)  # as Ray runs it (shell=True)
    subprocess.run(["/bin/sh", "-c", command], check=True)
    assert launch.log.read_text() == "it ran\nit ran\n"


def test_submission_ids_per_attempt(tmp_path: Path):
    one = Launch("job-7", 1, ["true"], tmp_path, tmp_path / "log")
    assert submission_id(one) == "job-7"
    assert submission_id(Launch("job-7", 3, ["true"], tmp_path, tmp_path / "log")) == (
        "job-7-attempt-3"
    )


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)  # import fails as if absent
    with pytest.raises(TrimtabError, match=r"pip install 'trimtab\[ray\]'"):
        RayExecutor("http://127.0.0.1:1").poll("x")


# ---- a fine-tuning job through the scheduler ------------------------------------------------


def test_a_fine_tuning_job_runs_on_the_cluster_and_its_model_is_served(
    head: Head, tmp_path: Path, tiny_llama_dir: Path
):
    from tests.jobs.test_scheduler import create, wait_for
    from trimtab.generation.pool import ModelPool
    from trimtab.jobs.scheduler import Scheduler
    from trimtab.jobs.service import JobsService
    from trimtab.jobs.store import Store

    store = Store(tmp_path / "home" / "jobs.db")
    service = JobsService(store, tmp_path / "home", tmp_path / "runs", org="acme")
    scheduler = Scheduler(service, RayExecutor(head.address), interval=0.2)
    try:
        job = create(service, tiny_llama_dir, max_steps=8)
        job = wait_for(service, job["id"], scheduler, lambda j: j["status"] == "succeeded", 180)
        row = service.job_row(job["id"])
        assert row["executor"] == "ray" and row["handle"] == job["id"]  # submission id = job id
        assert job["fine_tuned_model"] in {m.id for m in ModelPool(service.runs_dir).list()}
        # a second job, cancelled while it trains: Ray stops it and the job says so
        job = create(service, tiny_llama_dir, max_steps=4000, epochs=1000, log_every=5)
        wait_for(service, job["id"], scheduler, lambda j: j["status"] == "running", 120)
        service.cancel(job["id"])
        job = wait_for(service, job["id"], scheduler, lambda j: j["status"] == "cancelled", 60)
        assert RayExecutor(head.address).poll(job["id"]) == STOPPED
    finally:
        store.close()
