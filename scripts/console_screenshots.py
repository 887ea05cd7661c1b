"""The README's console screenshots, taken from a real `trimtab serve` with real models.

Serves the demo's runs (``make demo`` writes them), uploads MARC reviews and shows their
report, trains a short SmolLM2 LoRA job and shows its live curve, asks the demo's fine-tuned
model in the Playground (token view) and compares it with its base; Debian's Chromium through
Playwright, as the console's tests drive it.

    python scripts/console_screenshots.py [--runs runs/demo/runs] [--out docs/console]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARC = ROOT.parent / "shared" / "data" / "marc" / "en" / "train.csv"
REVIEW = "The zipper broke the second time I used it and the seller never answered.\n\n###\n\n"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def start_server(runs: Path, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        sys.executable,
        "-m",
        "trimtab",
        "serve",
        "--port",
        str(port),
        "--runs",
        str(runs),
        "--home",
        str(home),
    ]
    log = (home / "server.log").open("ab")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return server, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def write_reviews(path: Path, n: int = 400) -> None:
    """``n`` reviews drawn at random (seeded) from the train slice: every star rating."""
    import random

    with MARC.open(newline="") as f:
        rows = random.Random(0).sample(list(csv.DictReader(f)), n)
    with path.open("w") as out:
        for row in rows:
            prompt = row["review_body"][:500] + "\n\n###\n\n"
            out.write(json.dumps({"prompt": prompt, "completion": " " + row["stars"]}) + "\n")


def fine_tuned(url: str) -> str:
    models = json.load(urllib.request.urlopen(url + "/v1/models"))["data"]
    ids = [m["id"] for m in models if m["id"].startswith("ft:") and "ckpt" not in m["id"]]
    lora = [i for i in ids if "lora" in i]
    return (lora or ids)[0]


def shoot_data(page: Any, url: str, data: Path, out: Path) -> None:
    page.goto(url + "/#/data")
    page.get_by_test_id("file-input").set_input_files(str(data))
    page.get_by_test_id("report").get_by_test_id("check").first.wait_for(timeout=120_000)
    page.get_by_test_id("token-histogram").wait_for(timeout=120_000)
    page.screenshot(path=str(out / "data.png"), full_page=True)


def start_job(page: Any, url: str) -> None:
    file_id = json.load(urllib.request.urlopen(url + "/v1/files"))["data"][0]["id"]
    page.goto(url + "/#/jobs")
    page.get_by_test_id("job-model").select_option("smollm2-135m")
    page.get_by_test_id("job-training-file").select_option(file_id)
    page.get_by_test_id("job-method").select_option("lora")
    page.get_by_test_id("job-suffix").fill("stars")
    page.get_by_test_id("job-batch-size").fill("8")
    page.get_by_test_id("job-config").fill("max_steps=60\nlog_every=2\neval_every=20")
    page.get_by_test_id("job-create").click()
    page.get_by_test_id("job-created-item").first.wait_for()


def shoot_job(page: Any, url: str, out: Path) -> None:
    page.goto(url + "/#/jobs")
    page.get_by_test_id("job-row").first.locator("a").first.click()
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=\"chart\"]')?.dataset.points) > 20",
        timeout=600_000,
    )
    page.screenshot(path=str(out / "job.png"), full_page=True)


def shoot_playground(page: Any, url: str, model: str, out: Path) -> None:
    page.goto(url + "/#/playground")
    page.get_by_test_id("model-select").select_option(model)
    page.get_by_test_id("prompt").fill(REVIEW)
    page.locator("details.more").evaluate("d => { d.open = true; }")
    page.get_by_test_id("temperature").fill("0")
    page.get_by_test_id("max-tokens").fill("2")
    page.get_by_test_id("submit").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stats\"]').textContent.includes('total')",
        timeout=120_000,
    )
    page.get_by_test_id("token").last.hover()
    page.screenshot(path=str(out / "playground.png"), full_page=True)


def shoot_compare(page: Any, url: str, model: str, out: Path) -> None:
    page.goto(url + "/#/compare")
    boxes = page.get_by_test_id("compare-model")
    boxes.first.wait_for()
    for i in range(boxes.count()):
        label = boxes.nth(i).evaluate("b => b.closest('label')?.textContent || b.value")
        wanted = "smollm2-135m (base)" in label or model in label
        if boxes.nth(i).is_checked() != wanted:
            boxes.nth(i).click()
    page.get_by_test_id("prompt").fill(REVIEW)
    page.locator("details.more").evaluate("d => { d.open = true; }")
    page.get_by_test_id("temperature").fill("0")
    page.get_by_test_id("max-tokens").fill("3")
    page.get_by_test_id("compare-submit").click()
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="compare-stats"]')]
             .every(s => s.textContent.includes('total'))""",
        timeout=120_000,
    )
    page.screenshot(path=str(out / "compare.png"), full_page=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=str(ROOT / "runs" / "demo" / "runs"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "console"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="trimtab-console-"))
    write_reviews(home / "marc-reviews.jsonl")
    # The demo's runs are served through links, so that the job trained here stays out of them.
    runs = home / "runs"
    runs.mkdir()
    for run in Path(args.runs).absolute().iterdir():
        (runs / run.name).symlink_to(run)
    server, url = start_server(runs, home)
    chromium = os.environ.get("TRIMTAB_CHROMIUM", "/usr/bin/chromium")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            model = fine_tuned(url)
            shoot_data(page, url, home / "marc-reviews.jsonl", out)
            shoot_playground(page, url, model, out)
            shoot_compare(page, url, model, out)
            start_job(page, url)
            shoot_job(page, url, out)
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    print(f"screenshots in {out}; server log {home / 'server.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
