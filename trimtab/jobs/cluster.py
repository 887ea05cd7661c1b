"""Run jobs on a Ray cluster through the Ray Jobs API.

Why Ray: the local executor runs every job on the machine of the server. A Ray cluster places
each job on a node with free resources (``entrypoint_num_cpus``/``entrypoint_num_gpus``),
accounts for the GPUs that jobs hold so that two jobs never share one, and sets
``CUDA_VISIBLE_DEVICES`` to the GPUs it reserved. A job's command is the same as locally (the
``trimtab train`` entry point); it reaches a node as a shell command, so the cluster must share
the filesystem (the run folders, the job's files and the venv, at the same paths on every node).

The handle is the Ray submission id, which the store keeps. Everything :meth:`RayExecutor.poll`
and :meth:`RayExecutor.stop` need is asked of Ray, so a new server process reconciles its jobs
with the cluster from the handles alone.

``ray`` is imported inside the methods: trimtab imports without it (``pip install
'trimtab[ray]'`` when a cluster is used).
"""

from __future__ import annotations

import math
import shlex
import signal
import time
from typing import Any

from trimtab.errors import TrimtabError
from trimtab.jobs.executors import RUNNING, UNKNOWN, Launch

# A job ended by stop(): SIGTERM as a shell reports it, as the local executor does for a
# process group it signalled.
STOPPED = 128 + signal.SIGTERM
_POLL_EVERY = 0.2  # seconds between status checks while stop() waits
_KILL_MARGIN = 5.0  # stop() waits this long past grace for Ray's own SIGKILL to land
_TORCHRUN = "torch.distributed.run"  # what the `torchrun` script runs, from the same python

__all__ = ["STOPPED", "UNKNOWN", "RayExecutor", "distributed_argv", "entrypoint", "submission_id"]


def submission_id(launch: Launch) -> str:
    """The Ray submission id of one start: the job id, then ``<job>-attempt-<n>`` for retries
    (Ray never accepts a submission id twice, even after the job ended)."""
    if launch.attempt <= 1:
        return launch.job_id
    return f"{launch.job_id}-attempt-{launch.attempt}"


def distributed_argv(argv: list[str], gpus: float) -> list[str]:
    """``[python, "-m", "trimtab", ...]`` under torchrun with one process per GPU when a job
    holds more than one GPU; any other command is returned unchanged.

    torchrun runs as ``python -m torch.distributed.run`` from the command's own python, so the
    venv is the same, and ``--standalone`` gives each job its own rendezvous port (two jobs on
    one node would otherwise both take port 29500). Ray reserves the GPUs on one node, so a
    job is single-node.
    """
    if gpus <= 1 or len(argv) < 3 or argv[1:3] != ["-m", "trimtab"]:
        return list(argv)
    if gpus != math.floor(gpus):
        raise TrimtabError(f"a job on more than one GPU needs a whole number of GPUs, not {gpus}")
    nproc = int(gpus)
    return [argv[0], "-m", _TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *argv[1:]]


def entrypoint(launch: Launch) -> str:
    """The shell command Ray runs: output appended to the job's log, run in its folder.

    The redirection comes first so that a failing ``cd`` is in the log too; ``exec`` makes the
    command the process that Ray signals and whose exit code it reports.
    """
    argv = distributed_argv(launch.argv, launch.gpus)
    log, cwd = shlex.quote(str(launch.log)), shlex.quote(str(launch.cwd))
    return f"exec >>{log} 2>&1; cd {cwd} && exec {shlex.join(argv)}"


class RayExecutor:
    """Starts jobs as Ray jobs on the cluster whose dashboard is at ``address``
    (``http://HEAD:8265``); ``runtime_env`` is added to each job's (its ``env_vars`` under
    the job's own).

    ``kill_after`` is how long Ray waits between the SIGTERM and the SIGKILL of a stopped job
    (``RAY_JOB_STOP_WAIT_TIME_S``, which Ray reads per job; a whole number of seconds).
    """

    name = "ray"

    def __init__(
        self,
        address: str,
        *,
        runtime_env: dict[str, Any] | None = None,
        kill_after: float = 10.0,
    ) -> None:
        self.address = address
        self.runtime_env = dict(runtime_env or {})
        self.kill_after = kill_after
        self._client_: Any = None

    @property
    def _client(self) -> Any:
        """The JobSubmissionClient, made on first use (it checks that the cluster answers)."""
        if self._client_ is None:
            try:
                from ray.job_submission import JobSubmissionClient
            except ImportError as e:
                raise TrimtabError("the ray executor needs Ray: pip install 'trimtab[ray]'") from e
            try:
                self._client_ = JobSubmissionClient(self.address)
            except RuntimeError as e:  # ray without the [default] extra has no Jobs API
                raise TrimtabError(f"{e} (pip install 'trimtab[ray]')") from e
        return self._client_

    def _runtime_env(self, launch: Launch) -> dict[str, Any]:
        """The executor's runtime_env with the job's environment variables added.

        Ray gives a job's command ``OMP_NUM_THREADS=1`` whatever CPUs it reserved; the
        reservation is the job's share of the node, so torch gets that many threads instead.
        """
        env_vars = {
            "RAY_JOB_STOP_WAIT_TIME_S": str(math.ceil(self.kill_after)),
            "OMP_NUM_THREADS": str(max(1, math.floor(launch.cpus))),
        }
        env_vars |= self.runtime_env.get("env_vars") or {}
        env_vars |= launch.env
        return self.runtime_env | {"env_vars": env_vars}

    def start(self, launch: Launch) -> str:
        """Submit the job; return its submission id. A start that Ray already knows (a server
        that restarted between submitting and storing the handle) returns the same id."""
        handle = submission_id(launch)
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.submit_job(
                entrypoint=entrypoint(launch),
                submission_id=handle,
                runtime_env=self._runtime_env(launch),
                entrypoint_num_cpus=launch.cpus,
                entrypoint_num_gpus=launch.gpus,
            )
        except RuntimeError:
            if self._info(handle) is None:
                raise
        return handle

    def _info(self, handle: str) -> Any:
        """Ray's JobDetails of ``handle``, or None when Ray does not know it."""
        try:
            return self._client.get_job_info(handle)
        except RuntimeError as e:
            if "status code 404" in str(e):
                return None
            raise

    def poll(self, handle: str) -> int | None:
        """None while pending or running; the exit code once ended (128 + N for a signal N,
        :data:`STOPPED` after a stop, 1 for a failure without a code, e.g. its node died); -1
        (:data:`UNKNOWN`) when Ray does not know the job.

        A cluster that does not answer raises (ConnectionError): that says nothing of the job.
        """
        info = self._info(handle)
        if info is None:
            return UNKNOWN
        status = getattr(info.status, "value", info.status)
        if status in ("PENDING", "RUNNING"):
            return RUNNING
        if status == "STOPPED":
            return STOPPED
        code = info.driver_exit_code
        if code is None:
            return 0 if status == "SUCCEEDED" else 1
        # Ray reports a signal death as Popen does (-N): report it as a shell would (128 + N).
        return int(code) if code >= 0 else 128 - int(code)

    def stop(self, handle: str, grace: float = 10.0) -> None:
        """Ask Ray to stop the job (SIGTERM to the command and its children, SIGKILL after
        ``kill_after`` seconds) and return once Ray reports it ended, or after the longer of
        ``grace`` and ``kill_after`` plus a margin for that SIGKILL. A job that Ray does not
        know is already ended."""
        if self._info(handle) is None:
            return
        self._client.stop_job(handle)
        deadline = time.monotonic() + max(grace, self.kill_after) + _KILL_MARGIN
        while self.poll(handle) is RUNNING and time.monotonic() < deadline:
            time.sleep(_POLL_EVERY)

    def logs(self, handle: str) -> str:
        """What Ray kept of the job's output: the entrypoint line and anything printed before
        the command's output went to its log file ("" when Ray does not know the job)."""
        if self._info(handle) is None:
            return ""
        return str(self._client.get_job_logs(handle))
