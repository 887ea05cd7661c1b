"""The web console in a real browser over a live server: data reports, jobs training live,
cancelling, the Playground's streaming and token view, comparing models, the API key dialog,
the keyboard, and the layout at desktop and phone widths."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.console.conftest import (
    LONG_CONFIG,
    QUICK_CONFIG,
    TRAIN_ROWS,
    Console,
    PageErrors,
)
from tests.server.conftest import API_KEY

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

JSONL = "".join(json.dumps(r) + "\n" for r in TRAIN_ROWS).encode()


def upload_file(page: Any, name: str, content: bytes) -> None:
    page.get_by_test_id("file-input").set_input_files(
        {"name": name, "mimeType": "application/jsonl", "buffer": content}
    )


def uploaded(console: Console, page: Any) -> str:
    """The id of the training file (uploaded through the Data page once)."""
    if "file" not in console.shared:
        page.goto("/#/data")
        upload_file(page, "reviews.jsonl", JSONL)
        page.wait_for_url(re.compile(r"#/data/file-"))
        console.shared["file"] = page.url.rsplit("/", 1)[1]
    return console.shared["file"]


def create_job(page: Any, console: Console, config: str, suffix: str) -> str:
    """Fill the Jobs page's form and create a job; its id."""
    file_id = uploaded(console, page)
    page.goto("/#/jobs")
    page.get_by_test_id("job-model").select_option(console.base_model)
    page.get_by_test_id("job-training-file").select_option(file_id)
    page.get_by_test_id("job-method").select_option("lora")
    page.get_by_test_id("job-task").select_option("sft")
    page.get_by_test_id("job-suffix").fill(suffix)
    page.get_by_test_id("job-epochs").fill("10000")
    page.get_by_test_id("job-batch-size").fill("8")
    page.get_by_test_id("job-config").fill(config)
    before = page.get_by_test_id("job-created-item").count()
    page.get_by_test_id("job-create").click()
    created = page.get_by_test_id("job-created-item")
    created.nth(before).wait_for()
    return created.first.get_attribute("data-id")


def fine_tuned_model(console: Console) -> str:
    model = console.shared.get("model")
    if model is None:
        pytest.skip("needs the job trained by test_job_curve_grows_live_and_survives_a_reload")
    return model


def points(page: Any) -> int:
    return int(page.get_by_test_id("chart").get_attribute("data-points") or 0)


# --- (a) data ---------------------------------------------------------------------------------


def test_upload_shows_the_files_report(page: Any, console: Console, screenshots: Path) -> None:
    file_id = uploaded(console, page)
    report = page.get_by_test_id("report")
    report.get_by_test_id("check").first.wait_for()
    assert file_id in report.inner_text()
    # The duplicate (line 6 repeats line 1) is a check with the lines at fault.
    locations = report.get_by_test_id("check-locations")
    assert locations.count() >= 1
    assert re.search(r"line \d+", locations.first.inner_text())
    # The two labels' balance, and the token lengths' histogram.
    bars = report.get_by_test_id("label-bar")
    assert bars.count() == 2
    assert sorted(bars.evaluate_all("rows => rows.map(r => Number(r.dataset.count))")) == [
        15,
        17,
    ]  # row 5 (a " 5") repeats row 0 (a " 1")
    assert report.get_by_test_id("token-histogram").locator("rect").count() >= 1
    # The file is listed, openable.
    assert page.locator(f'[data-testid="file-item"][data-id="{file_id}"] a').count() == 1
    page.screenshot(path=str(screenshots / "data-report-1280.png"), full_page=True)


def test_a_malformed_upload_shows_the_error_naming_the_line(page: Any) -> None:
    page.goto("/#/data")
    upload_file(
        page, "broken.jsonl", b"".join(JSONL.splitlines(keepends=True)[:2]) + b"{not json\n"
    )
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "line 3" in alert.inner_text()
    assert "broken.jsonl" in alert.inner_text()


# --- (b, c) a job's live curve ------------------------------------------------------------------


def test_job_curve_grows_live_and_survives_a_reload(
    page: Any, console: Console, screenshots: Path
) -> None:
    job_id = create_job(page, console, QUICK_CONFIG, "quick")
    row = page.locator(f'[data-testid="job-row"][data-id="{job_id}"]')
    row.wait_for()  # listed at once, refreshed every 2 s
    page.screenshot(path=str(screenshots / "jobs-1280.png"), full_page=True)
    row.get_by_role("link", name=job_id).click()
    page.wait_for_url(f"**/#/jobs/{job_id}")
    # Every point count the chart shows, as it changes.
    page.get_by_test_id("chart").wait_for()
    page.evaluate(
        """() => {
            const chart = document.querySelector('[data-testid="chart"]');
            window.seen = [];
            new MutationObserver(() => window.seen.push(Number(chart.dataset.points)))
                .observe(chart, {attributes: true, attributeFilter: ['data-points']});
        }"""
    )
    page.wait_for_function(
        "() => new Set(window.seen.filter(n => n > 0)).size >= 2", timeout=90_000
    )
    seen = page.evaluate("window.seen")
    assert seen == sorted(seen) and seen[-1] > 0  # the curve grows, never shrinks

    page.reload()
    page.wait_for_url(f"**/#/jobs/{job_id}")
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=\"chart\"]')?.dataset.points) > 0"
    )
    page.locator(".job-head [data-testid=status]", has_text="succeeded").wait_for(timeout=120_000)
    assert points(page) >= 30  # 120 steps, logged every 2
    model = page.get_by_test_id("fine-tuned-model").inner_text()
    assert model.startswith("ft:")
    assert page.get_by_test_id("checkpoint").count() >= 1
    assert page.get_by_test_id("job-cancel").is_disabled()
    page.screenshot(path=str(screenshots / "job-1280.png"), full_page=True)
    console.shared["model"] = model
    console.shared["job"] = job_id
    # Open in Playground picks the model there.
    page.get_by_test_id("open-model").click()
    page.wait_for_url(re.compile(r"#/playground\?model="))
    assert page.get_by_test_id("model-select").input_value() == model


# --- (d) cancel ---------------------------------------------------------------------------------


def test_cancel_a_long_job_from_its_page(page: Any, console: Console) -> None:
    job_id = create_job(page, console, LONG_CONFIG, "long")
    page.goto(f"/#/jobs/{job_id}")
    cancel = page.get_by_test_id("job-cancel")
    page.wait_for_function("() => !document.querySelector('[data-testid=\"job-cancel\"]').disabled")
    page.locator(".job-head [data-testid=status]", has_text="running").wait_for(timeout=90_000)
    assert page.get_by_test_id("job-resume").is_disabled()
    cancel.click()
    page.locator(".job-head [data-testid=status]", has_text="cancelled").wait_for(timeout=60_000)
    assert cancel.is_disabled() and page.get_by_test_id("job-pause").is_disabled()
    assert console.call("GET", f"/v1/fine_tuning/jobs/{job_id}")["status"] == "cancelled"


# --- (e) the Playground -------------------------------------------------------------------------


def generate(page: Any, prompt: str, stop: str = "") -> str:
    page.get_by_test_id("prompt").fill(prompt)
    page.locator("details.more").evaluate("d => { d.open = true; }")
    page.get_by_test_id("temperature").fill("0")
    page.get_by_test_id("max-tokens").fill("24")
    page.get_by_test_id("stop-0").fill(stop)
    page.get_by_test_id("submit").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stats\"]').textContent.includes('total')"
    )
    return page.get_by_test_id("output").inner_text()


def test_playground_streams_the_fine_tuned_model_with_a_stop_sequence(
    page: Any, console: Console, screenshots: Path
) -> None:
    model = fine_tuned_model(console)
    page.goto(f"/#/playground?model={model}")
    page.get_by_test_id("model-select").wait_for()
    assert page.get_by_test_id("model-select").input_value() == model
    prompt = "review 3: great love works\n\n###\n\n"
    full = generate(page, prompt)
    assert len(full) >= 4
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    # Count the pieces the output arrives in: a stream, not one answer.
    page.evaluate(
        """() => {
            const out = document.querySelector('[data-testid="output"]');
            window.pieces = 0;
            new MutationObserver(r => window.pieces += r.length).observe(out, {childList: true});
        }"""
    )
    cut = generate(page, prompt, stop)
    assert stop not in cut
    assert full.startswith(cut) and len(cut) < len(full)
    assert "finish: stop" in page.get_by_test_id("stats").inner_text()
    assert page.evaluate("window.pieces") >= 2
    # The token view: every token with its probability and alternatives, on hover and focus.
    tokens = page.get_by_test_id("token")
    assert tokens.count() >= 1
    first = tokens.first
    tip = first.get_attribute("data-tip")
    assert re.search(r"\d+\.\d%", tip) and "Alternatives:" in tip
    assert first.get_attribute("title") == tip and first.get_attribute("aria-label")
    first.focus()
    shown = first.evaluate("el => getComputedStyle(el, '::after').content")
    assert "Alternatives" in shown
    page.screenshot(path=str(screenshots / "playground-tokens-1280.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 812})
    page.wait_for_timeout(200)
    assert page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(screenshots / "playground-tokens-375.png"), full_page=True)


# --- (f) compare models -------------------------------------------------------------------------


def test_compare_two_models_side_by_side(page: Any, console: Console, screenshots: Path) -> None:
    model = fine_tuned_model(console)
    page.goto("/#/compare")
    boxes = page.get_by_test_id("compare-model")
    boxes.first.wait_for()
    for i in range(boxes.count()):
        value = boxes.nth(i).get_attribute("value")
        boxes.nth(i).set_checked(value in (console.base_model, model))
    page.get_by_test_id("prompt").fill("review 8: awful broke\n\n###\n\n")
    page.locator("details.more").evaluate("d => { d.open = true; }")
    page.get_by_test_id("max-tokens").fill("12")
    page.get_by_test_id("compare-submit").click()
    columns = page.get_by_test_id("compare-column")
    columns.nth(1).wait_for()
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="compare-stats"]')]
            .every(s => s.textContent.includes('total'))"""
    )
    assert sorted(columns.evaluate_all("cs => cs.map(c => c.dataset.model)")) == sorted(
        [console.base_model, model]
    )
    for i in range(2):
        stats = columns.nth(i).get_by_test_id("compare-stats").inner_text()
        assert re.search(r"first token \d+ ms", stats) and re.search(r"total \d+ ms", stats)
        assert re.search(r"\d+ tokens", stats)
        assert columns.nth(i).get_by_test_id("compare-output").inner_text() != ""
    page.screenshot(path=str(screenshots / "compare-1280.png"), full_page=True)


# --- (g) the API key ----------------------------------------------------------------------------


def test_the_key_dialog_appears_on_401_and_the_page_then_works(
    browser: Any, console: Console
) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=console.url)
    errors = PageErrors()
    try:
        page = ctx.new_page()
        errors.watch(page)
        page.goto("/#/jobs")
        dialog = page.get_by_test_id("key-dialog")
        dialog.wait_for(state="visible")
        assert "API key" in dialog.inner_text()
        page.get_by_test_id("key-input").fill("sk-wrong")
        page.get_by_test_id("key-save").click()
        dialog.wait_for(state="visible")  # a wrong key: asked again, with the server's word
        assert "Incorrect API key" in dialog.inner_text()
        page.get_by_test_id("key-input").fill(API_KEY)
        page.get_by_test_id("key-save").click()
        dialog.wait_for(state="hidden")
        page.get_by_test_id("job-row").first.wait_for()
        assert page.get_by_role("alert").count() == 0
        assert page.evaluate("localStorage.getItem('trimtab.apiKey')") == API_KEY
        # The header's key control opens the dialog again; Escape closes it.
        page.get_by_test_id("key-button").click()
        dialog.wait_for(state="visible")
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden")
    finally:
        ctx.close()
    assert not errors.messages, errors.messages


# --- (h) the keyboard ---------------------------------------------------------------------------


def test_keyboard_only_reaches_the_playground_and_submits(page: Any, console: Console) -> None:
    page.goto("/#/data")
    page.get_by_test_id("file-list").wait_for()

    def tab_to(testid: str, most: int = 40) -> None:
        for _ in range(most):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement?.dataset?.testid") == testid:
                return
        raise AssertionError(f"Tab never reached {testid}")

    tab_to("nav-playground")
    page.keyboard.press("Enter")
    page.wait_for_url("**/#/playground")
    page.get_by_test_id("model-select").wait_for()
    tab_to("prompt")
    page.keyboard.type("review 1: great\n\n###\n\n")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stats\"]').textContent.includes('total')"
    )
    assert page.get_by_role("alert").count() == 0
    # The focus is visible: an outline on the focused control.
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")


# --- (i) every page at 1280 px, and the phone layout --------------------------------------------


@pytest.mark.parametrize("route", ["playground", "compare", "data", "jobs", "runs", "evaluations"])
def test_pages_render_at_desktop_and_phone_widths(
    page: Any, console: Console, screenshots: Path, route: str
) -> None:
    hash_ = f"#/{route}"
    if route == "runs" and "job" in console.shared:
        hash_ += f"?job={console.shared['job']}"
    page.goto(f"/{hash_}")
    page.get_by_role("heading", level=1).wait_for()
    page.wait_for_load_state("networkidle")
    assert page.locator("main h1").count() == 1
    if route == "runs" and "job" in console.shared:
        page.wait_for_function(
            "() => Number(document.querySelector('[data-testid=\"chart\"]')?.dataset.points) > 0"
        )
    assert page.get_by_role("alert").count() == 0, page.get_by_role("alert").all_inner_texts()
    page.screenshot(path=str(screenshots / f"{route}-1280.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 812})
    page.wait_for_timeout(150)
    overflow = page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{route} overflows a phone by {overflow}px"
    page.screenshot(path=str(screenshots / f"{route}-375.png"), full_page=True)


def test_no_trainer_is_left_running(console: Console) -> None:
    deadline = time.monotonic() + 30
    for job in console.call("GET", "/v1/fine_tuning/jobs?limit=100")["data"]:
        if job["status"] in ("queued", "running", "paused", "validating_files"):
            console.call("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    while time.monotonic() < deadline:
        jobs = console.call("GET", "/v1/fine_tuning/jobs?limit=100")["data"]
        if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
            return
        time.sleep(0.5)
    raise AssertionError("a job is still running")
