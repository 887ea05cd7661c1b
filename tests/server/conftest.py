"""A live server on 127.0.0.1 over the real engine: the tiny Llama, two LoRA runs on it and a
classification run, driven by the official ``openai`` client."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

API_KEY = "sk-test-key"
NO_EOS = {"0": -100}  # the tiny tokenizer's <|endoftext|> is token 0: completions run to length


def _train(root: Path, name: str, model: Path, rows: list[dict], *extra: str) -> Path:
    from trimtab.training import load_config, train

    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(
        None,
        [
            f"data.train={data}",
            f"model.name={model}",
            f"run_dir={root / 'runs' / name}",
            "max_steps=3",
            "batch_size=8",
            "optim.lr=0.05",
            "precision=fp32",
            *extra,
        ],
    )
    train(config, progress=False)
    return root / "runs" / name


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    """Two LoRA sft runs on the tiny Llama (adapters moved away from zero) and a full
    classification run (labels "1" and "5")."""
    root = tmp_path_factory.mktemp("served")
    lora = ("method.name=lora", "method.init_lora_weights=gaussian")
    for name, word in (("lora-a", " ok"), ("lora-b", " no")):
        rows = [{"prompt": f"review {i}: great\n\n###\n\n", "completion": word} for i in range(32)]
        _train(root, name, tiny_llama_dir, rows, *lora)
    rows = [
        {"prompt": f"review {i}: {'great love' if i % 2 else 'terrible awful'}", "completion": s}
        for i in range(32)
        for s in (("5",) if i % 2 else ("1",))
    ]
    _train(root, "classes", tiny_llama_dir, rows, "data.task=classify", "method.name=full")
    return root / "runs"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Live:
    """A running server: its address and what it serves."""

    url: str
    engine: Any
    pool: Any

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


@contextmanager
def run_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yields its URL."""
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def live(runs_dir: Path, tiny_llama_dir: Path) -> Iterator[Live]:
    """The real engine and pool behind the app, with an API key."""
    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool
    from trimtab.server.app import create_app

    pool = ModelPool(runs_dir, preload=[str(tiny_llama_dir)])
    engine = Engine(pool, max_batch_size=16, max_queue=64)
    try:
        with run_server(create_app(engine, pool, api_key=API_KEY)) as url:
            yield Live(url, engine, pool)
    finally:
        engine.close()


@pytest.fixture
def client(live: Live):
    from openai import OpenAI

    with OpenAI(base_url=live.v1, api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def base_id(tiny_llama_dir: Path) -> str:
    return str(tiny_llama_dir)


@pytest.fixture(scope="session")
def run_ids(live: Live, runs_dir: Path) -> dict[str, str]:
    """Run folder name -> its ft: id, as the pool lists it."""
    ids = {Path(m.path).name: m.id for m in live.pool.list() if m.fine_tuned}
    assert {"lora-a", "lora-b", "classes"} <= set(ids)
    return ids


@pytest.fixture(scope="session")
def tokenizer(tiny_llama_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture
def spare_run(runs_dir: Path, live: Live) -> str:
    """A copy of a LoRA run, under its own name: something to delete."""
    folder = runs_dir / f"spare-{time.monotonic_ns()}"
    shutil.copytree(runs_dir / "lora-a", folder)
    (info,) = [m for m in live.pool.list() if m.path and Path(m.path).name == folder.name]
    return info.id


@pytest.fixture
def slow_decoding() -> Iterator[None]:
    """Every forward pass of a Llama takes 20 ms more: requests overlap in the engine, and a
    200-token completion takes seconds, long enough to watch it being cancelled."""
    import torch

    def pause(module: Any, args: Any) -> None:
        if type(module).__name__ == "LlamaForCausalLM":
            time.sleep(0.02)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(pause)
    yield
    handle.remove()


JOBS_MAX_FILE_BYTES = 64 * 1024  # small, so that a test can send a file over it


@dataclass
class JobsLive:
    """A running server with the files and fine-tuning jobs API over a fresh store, and no
    scheduler: jobs stay as created (validating_files) unless a test moves them."""

    url: str
    service: Any
    home: Path

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="session")
def idle_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """An engine and pool that the jobs API tests never use (the app needs them)."""
    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool

    pool = ModelPool(tmp_path_factory.mktemp("no-runs"))
    engine = Engine(pool)
    try:
        yield engine, pool
    finally:
        engine.close()


@contextmanager
def serve_jobs(root: Path, backend: tuple[Any, Any], **options: Any) -> Iterator[JobsLive]:
    """A live app whose jobs service keeps its store, files and runs under ``root``."""
    from trimtab.jobs.service import JobsService
    from trimtab.jobs.store import Store
    from trimtab.server.app import create_app

    home = root / "home"
    store = Store(home / "jobs.db")
    service = JobsService(store, home, root / "runs", max_file_bytes=JOBS_MAX_FILE_BYTES)
    try:
        app = create_app(*backend, api_key=API_KEY, jobs=service, **options)
        with run_server(app) as url:
            yield JobsLive(url, service, home)
    finally:
        store.close()


@pytest.fixture
def jobs_live(tmp_path: Path, idle_backend: tuple[Any, Any]) -> Iterator[JobsLive]:
    with serve_jobs(tmp_path, idle_backend) as served:
        yield served


@pytest.fixture
def jobs_client(jobs_live: JobsLive):
    from openai import OpenAI

    with OpenAI(base_url=jobs_live.v1, api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c
