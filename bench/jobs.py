"""The jobs API's latencies, measured on a real `trimtab serve` with the official client.

One run, one job (SmolLM2-135M + LoRA on MARC reviews by default):

- create → running: from ``jobs.create`` returning to the job's status reading ``running``
  (file validation, a scheduler tick, the training process started), and → first metrics event;
- event latency: from a line appearing in the run's ``metrics.jsonl`` (watched every 5 ms) to
  its event being listed by ``jobs.list_events``;
- restart recovery: the server is killed with SIGKILL mid-job and started again; from the kill
  to the new server answering, to the job being followed again (a new metrics event listed),
  and whether any event was written twice;
- the fine-tuned model answering its first completion once the job succeeds.

There is no peer to run beside it (OpenAI's hosted API cannot be reached from here), so the
figures stand alone; the CPU's features are printed beside them.

    python bench/jobs.py [--model smollm2-135m] [--steps 40] [--reviews 256]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARC = ROOT.parent / "shared" / "data" / "marc" / "en" / "train.csv"
API_KEY = "sk-bench"


def cpu_features() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return "unknown CPU"
    wanted = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")
    have = [f for f in wanted if f" {f}" in flags]
    return f"{os.cpu_count()} cores, " + (", ".join(have) or "no AVX2")


def write_data(path: Path, n: int) -> None:
    with MARC.open(newline="") as f, path.open("w") as out:
        for i, row in enumerate(csv.DictReader(f)):
            if i >= n:
                break
            prompt = row["review_body"][:600] + "\n\n###\n\n"
            out.write(json.dumps({"prompt": prompt, "completion": " " + row["stars"]}) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "trimtab", "serve", "--port", str(port), "--api-key", API_KEY]
    argv += ["--home", str(home), "--runs", str(home / "runs")]
    with log.open("ab") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return server
        except OSError:
            assert server.poll() is None, log.read_text()[-2000:]
            time.sleep(0.02)
    raise RuntimeError("the server did not start")


def wait(predicate, timeout: float = 1800, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError


def all_events(client, job_id: str) -> list:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=1000).data)


def metric_steps(client, job_id: str) -> set[tuple[str, int]]:
    return {
        (e.message.split(":")[1].split("=")[0].strip(), e.data["step"])
        for e in all_events(client, job_id)
        if e.type == "metrics"
    }


def event_latencies(client, job_id: str, metrics: Path, samples: int) -> list[float]:
    """Seconds from a metrics line appearing on disk to its event being listed."""
    out = []
    seen = 0
    while len(out) < samples:
        lines = wait(
            lambda n=seen: len(metrics.read_text().splitlines()) > n and metrics, every=0.005
        )
        appeared = time.monotonic()
        records = [json.loads(x) for x in lines.read_text().splitlines()]
        seen = len(records)
        step = records[-1]["step"]
        wait(lambda s=step: any(st == s for _, st in metric_steps(client, job_id)), every=0.005)
        out.append(time.monotonic() - appeared)
    return out


def create_job(client, data: Path, model: str, steps: int):
    with data.open("rb") as f:
        file = client.files.create(file=f, purpose="fine-tune")
    config = {"max_steps": steps, "save_every": 10, "log_every": 1, "precision": "auto"}
    return client.fine_tuning.jobs.create(
        model=model,
        training_file=file.id,
        suffix="bench",
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}},
        extra_body={"trimtab": {"config": config}},
    )


def measure_start(client, job_id: str, figures: dict[str, str]) -> Path:
    """create -> running, -> first metrics event, then the event latency; the run folder."""
    created = time.monotonic()
    wait(lambda: client.fine_tuning.jobs.retrieve(job_id).status == "running")
    figures["create -> running"] = f"{time.monotonic() - created:.2f} s"
    wait(lambda: metric_steps(client, job_id), every=0.05)
    figures["create -> first metrics event"] = f"{time.monotonic() - created:.2f} s"
    run = Path(client.fine_tuning.jobs.retrieve(job_id).model_extra["trimtab"]["run_dir"])
    lat = event_latencies(client, job_id, run / "metrics.jsonl", samples=8)
    median, most = statistics.median(lat) * 1000, max(lat) * 1000
    figures["event latency (median of 8)"] = f"{median:.0f} ms (max {most:.0f} ms)"
    return run


def measure_restart(client, job_id: str, server, home: Path, port: int, figures) -> Any:
    """SIGKILL the server mid-job, start it again: the new server process."""
    before = len(metric_steps(client, job_id))
    server.send_signal(signal.SIGKILL)
    server.wait()
    killed = time.monotonic()
    server = start_server(home, port, home / "server.log")
    figures["SIGKILL -> new server answers"] = f"{time.monotonic() - killed:.2f} s"
    wait(lambda: len(metric_steps(client, job_id)) > before, every=0.02)
    figures["SIGKILL -> job followed again (new event listed)"] = (
        f"{time.monotonic() - killed:.2f} s"
    )
    return server


def measure_end(client, job_id: str, figures: dict[str, str]) -> None:
    finished = ("succeeded", "failed", "cancelled")
    done = wait(lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in finished and j)
    assert done.status == "succeeded", done.error
    events = Counter(
        (e.message, json.dumps(e.data, sort_keys=True)) for e in all_events(client, job_id)
    )
    figures["events written twice"] = str(sum(1 for c in events.values() if c > 1))
    started = time.monotonic()
    answer = client.completions.create(
        model=done.fine_tuned_model, prompt="Great product!\n\n###\n\n", max_tokens=2
    )
    figures["first completion of the fine-tuned model"] = (
        f"{time.monotonic() - started:.2f} s ({answer.choices[0].text!r})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reviews", type=int, default=256)
    args = parser.parse_args()
    from openai import OpenAI

    home = Path(tempfile.mkdtemp(prefix="trimtab-bench-jobs-"))
    write_data(home / "marc.jsonl", args.reviews)
    port = free_port()
    server = start_server(home, port, home / "server.log")
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
    figures: dict[str, str] = {}
    try:
        job = create_job(client, home / "marc.jsonl", args.model, args.steps)
        run = measure_start(client, job.id, figures)
        wait(lambda: list(run.glob("checkpoints/step-*")), every=0.05)
        server = measure_restart(client, job.id, server, home, port, figures)
        measure_end(client, job.id, figures)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    print(f"\ntrimtab jobs API, {args.model} LoRA {args.steps} steps; {cpu_features()}\n")
    print("| measure | figure |\n| --- | --- |")
    for key, value in figures.items():
        print(f"| {key} | {value} |")
    print(f"\n(server log and run: {home})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
