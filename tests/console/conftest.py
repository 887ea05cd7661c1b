"""A live trimtab server (the real app: API, jobs with a running scheduler, the web console)
and one headless Chromium for the console's browser tests.

Chromium is Debian's (``$TRIMTAB_CHROMIUM`` or ``/usr/bin/chromium``), driven by Playwright for
Python; Playwright's own browsers are never downloaded. Without either the tests skip, unless
``TRIMTAB_REQUIRE_BROWSER=1`` (CI), where they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import API_KEY, run_server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Reviews whose completion is their label; line 6 repeats line 1 (a duplicate check to find).
TRAIN_ROWS = [
    {
        "prompt": f"review {i}: {'great love' if i % 2 else 'awful broke'}\n\n###\n\n",
        "completion": " 5" if i % 2 else " 1",
    }
    for i in range(32)
]
TRAIN_ROWS[5] = TRAIN_ROWS[0]
# A tiny job trains in seconds; a long one runs until cancelled.
QUICK_CONFIG = "precision=fp32\nmax_steps=120\nlog_every=2\nsave_every=40"
LONG_CONFIG = "precision=fp32\nmax_steps=100000\nlog_every=5\nsave_every=100000"


def _unavailable(reason: str) -> None:
    if os.environ.get("TRIMTAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"TRIMTAB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def chromium_path() -> str:
    return os.environ.get("TRIMTAB_CHROMIUM") or "/usr/bin/chromium"


@dataclass
class Console:
    """The served app: its URL, the jobs service behind it, what tests record for others."""

    url: str
    service: Any
    base_model: str
    home: Path
    shared: dict[str, Any] = field(default_factory=dict)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON call to the API with the key (for setting things up, not for testing)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[Console]:
    """The real app (``create_app``) over the tiny Llama, a jobs service with a scheduler that
    really trains (local processes), and evaluations when the server has them."""
    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool
    from trimtab.jobs.executors import LocalExecutor
    from trimtab.jobs.scheduler import Scheduler
    from trimtab.jobs.service import JobsService
    from trimtab.jobs.store import Store
    from trimtab.server.app import create_app

    if not (ROOT / "trimtab" / "console" / "static" / "index.html").is_file():
        pytest.fail("the console is not built: run `make console`")
    root = tmp_path_factory.mktemp("console")
    home, runs = root / "home", root / "runs"
    runs.mkdir()
    pool = ModelPool(runs, preload=[str(tiny_llama_dir)])
    engine = Engine(pool, max_batch_size=16, max_queue=64)
    store = Store(home / "jobs.db")
    service = JobsService(store, home, runs)
    options: dict[str, Any] = {}
    if importlib.util.find_spec("trimtab.jobs.evaluations") is not None:
        from trimtab.jobs.evaluations import EvaluationService

        options["evaluations"] = EvaluationService(home, pool, service)
    scheduler = Scheduler(service, LocalExecutor(), interval=0.2)
    scheduler.start()
    try:
        app = create_app(engine, pool, api_key=API_KEY, jobs=service, **options)
        with run_server(app) as url:
            yield Console(url, service, str(tiny_llama_dir), home)
            for job in service.list_jobs(limit=100)["data"]:  # leave no trainer behind
                if job["status"] in ("validating_files", "queued", "running", "paused"):
                    service.cancel(job["id"])
    finally:
        scheduler.stop()
        engine.close()
        store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Debian Chromium for the module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    path = chromium_path()
    if not (Path(path).is_file() or shutil.which(path)):
        _unavailable(f"no Chromium at {path} (set TRIMTAB_CHROMIUM)")
    with sync_playwright() as p:
        # launch() gives Chromium a fresh, temporary user-data dir and removes it at close.
        chromium = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class PageErrors:
    """What a page logged as errors (failed loads the tests cause on purpose aside)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def watch(self, page: Any) -> None:
        page.on("pageerror", lambda e: self.messages.append(f"pageerror: {e}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.messages.append(f"console: {message.text}")


@pytest.fixture
def context(browser: Any, console: Console) -> Iterator[Any]:
    """A browser context with the API key already kept (as after the key dialog)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=console.url)
    # In the top page only: a sandboxed frame (the evaluation report) has no localStorage.
    key = json.dumps(API_KEY)
    ctx.add_init_script(f"if (window === window.top) localStorage.setItem('trimtab.apiKey', {key})")
    ctx.set_default_timeout(30_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    """A page of ``context``; the test fails if the page logged an error."""
    errors = PageErrors()
    tab = context.new_page()
    errors.watch(tab)
    yield tab
    assert not errors.messages, errors.messages


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = Path(os.environ.get("TRIMTAB_SCREENSHOTS") or Path(__file__).parent / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
