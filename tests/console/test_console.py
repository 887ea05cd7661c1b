"""The web console in a real browser over a live server: data reports, jobs training live,
cancelling, pausing and resuming, the curves' smoothing, the Playground's streaming, token view
and chat, comparing models, evaluations, comparing runs, the API key dialog, the keyboard, and
the layout at desktop and phone widths."""

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
# A test set: new reviews of both labels (the evaluation reads its first 8).
TEST_JSONL = "".join(
    json.dumps(
        {
            "prompt": f"review {i}: {'love it great' if i % 3 else 'broke awful'}\n\n###\n\n",
            "completion": " 5" if i % 3 else " 1",
        }
    )
    + "\n"
    for i in range(100, 112)
).encode()
# Long enough to be paused while it runs, short enough to finish soon after it resumes.
PAUSE_CONFIG = "precision=fp32\nmax_steps=300\nlog_every=5\nsave_every=100000"
# How long a generation's stats may take to read "total". A few tokens of the tiny model take
# well under a second on an idle machine, but tens of seconds while trainers hold every core
# (a run with a sweep training beside it took 20-30 s per Playground answer): the 30 s page
# default would time out on load alone.
GENERATION_TIMEOUT = 90_000


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
    # A fixed seed: the fine-tuned tiny model's text (which the Playground tests read) is the
    # same from run to run, instead of a random model's some runs only.
    page.get_by_test_id("job-seed").fill("0")
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


def wait_for_points(page: Any, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=\"chart\"]')?.dataset.points) > 0",
        timeout=timeout,
    )


def job_status(page: Any, status: str, timeout: float = 60_000) -> None:
    """Wait until the job page's status badge reads ``status``; on a timeout, say what it
    read and the newest events (a job still running under load is not a stuck one)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    badge = page.locator(".job-head [data-testid=status]")
    try:
        badge.filter(has_text=status).wait_for(timeout=timeout)
    except PlaywrightTimeout:
        shown = badge.all_inner_texts()
        events = page.get_by_test_id("event").all_inner_texts()[:3]
        message = f"status {shown} after {timeout} ms, not {status!r}; newest events: {events}"
        raise AssertionError(message) from None


def metric_steps(page: Any) -> list[int]:
    """The steps of the metrics events the job page lists (one per logged step)."""
    texts = page.locator('[data-testid="event"][data-type="metrics"]').all_inner_texts()
    return [int(m.group(1)) for t in texts if (m := re.search(r"Step (\d+)/", t))]


def legend_values(page: Any, fraction: float = 0.8) -> dict[str, str]:
    """The chart legend's values at the cursor, with the mouse ``fraction`` across the plot."""
    box = page.locator(".u-over").bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.move(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)
    rows = page.locator(".u-legend .u-series")
    return {
        rows.nth(i).locator(".u-label").inner_text(): rows.nth(i).locator(".u-value").inner_text()
        for i in range(rows.count())
    }


def fmt(x: Any) -> str:
    """A number as the console shows it (ui.js's fmt)."""
    if x is None:
        return "—"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:.3f}"
    return str(int(x)) if isinstance(x, float) else str(x)


def cells(row: Any) -> list[str]:
    return row.locator("th, td").all_inner_texts()


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
    # The page mounts once the job is read (its kind picks the job or the sweep page): the
    # button may not be there yet.
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"job-cancel\"]')?.disabled === false"
    )
    page.locator(".job-head [data-testid=status]", has_text="running").wait_for(timeout=90_000)
    assert page.get_by_test_id("job-resume").is_disabled()
    cancel.click()
    page.locator(".job-head [data-testid=status]", has_text="cancelled").wait_for(timeout=60_000)
    assert cancel.is_disabled() and page.get_by_test_id("job-pause").is_disabled()
    assert console.call("GET", f"/v1/fine_tuning/jobs/{job_id}")["status"] == "cancelled"


# --- (d') pause and resume, smoothing --------------------------------------------------------


def test_pause_then_resume_a_running_job_keeps_its_curve_and_succeeds(
    page: Any, console: Console
) -> None:
    job_id = create_job(page, console, PAUSE_CONFIG, "paused")
    page.goto(f"/#/jobs/{job_id}")
    pause, resume = page.get_by_test_id("job-pause"), page.get_by_test_id("job-resume")
    cancel = page.get_by_test_id("job-cancel")
    wait_for_points(page, timeout=90_000)
    job_status(page, "running")
    assert not pause.is_disabled() and resume.is_disabled()
    pause.click()
    job_status(page, "paused")
    assert pause.is_disabled() and not resume.is_disabled() and not cancel.is_disabled()
    assert console.call("GET", f"/v1/fine_tuning/jobs/{job_id}")["status"] == "paused"
    before = metric_steps(page)
    assert before and max(before) < 300, before  # paused part way
    assert points(page) == len(set(before))

    resume.click()
    page.locator(".job-head [data-testid=status]", has_text=re.compile("queued|running")).wait_for()
    assert resume.is_disabled() and not cancel.is_disabled()
    job_status(page, "succeeded", timeout=120_000)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"chart\"]').dataset.step === '300'"
    )
    steps = metric_steps(page)
    assert len(steps) == len(set(steps)), "a step is listed twice"
    assert set(before) <= set(steps)  # the earlier points are kept
    assert max(steps) == 300
    assert points(page) == len(set(steps))
    assert pause.is_disabled() and resume.is_disabled() and cancel.is_disabled()
    messages = page.get_by_test_id("event").all_inner_texts()
    assert any("Pause requested" in m for m in messages)
    assert any("resumed" in m for m in messages)
    console.shared["paused_job"] = job_id


def test_smoothing_changes_the_plotted_training_loss_but_not_the_points(
    page: Any, console: Console
) -> None:
    if "job" not in console.shared:
        pytest.skip("needs the job trained by test_job_curve_grows_live_and_survives_a_reload")
    page.goto(f"/#/jobs/{console.shared['job']}")
    job_status(page, "succeeded")
    wait_for_points(page)
    count = points(page)
    raw = legend_values(page)["train loss"]
    float(raw)  # a number is shown at the cursor
    smoothing = page.get_by_test_id("smoothing")
    smoothing.focus()
    page.keyboard.press("End")
    assert page.locator("output[for=smoothing]").inner_text() == "0.99"
    smoothed = legend_values(page)["train loss"]
    assert float(smoothed) != float(raw)
    assert points(page) == count
    smoothing.focus()
    page.keyboard.press("Home")  # smoothing off again: the raw values
    assert page.locator("output[for=smoothing]").inner_text() == "0.00"
    assert legend_values(page)["train loss"] == raw
    assert points(page) == count


def test_a_job_page_says_it_is_loading_until_the_job_is_read(page: Any, console: Console) -> None:
    if "job" not in console.shared:
        pytest.skip("needs the job trained by test_job_curve_grows_live_and_survives_a_reload")
    job_id = console.shared["job"]
    held: list[Any] = []  # the page's first read of the job, held until the note is seen

    def hold_first(route: Any) -> None:
        if held:
            route.continue_()  # the job page's own reads, once it is up
        else:
            held.append(route)

    page.route(f"**/v1/fine_tuning/jobs/{job_id}", hold_first)
    page.goto(f"/#/jobs/{job_id}")
    loading = page.get_by_test_id("page-loading")
    loading.wait_for()
    assert job_id in loading.inner_text() and loading.get_attribute("aria-busy") == "true"
    for _ in range(100):  # the held request reaches the handler once events are processed
        if held:
            break
        page.wait_for_timeout(50)
    assert held and page.get_by_test_id("job-cancel").count() == 0
    held[0].continue_()
    job_status(page, "succeeded")
    assert loading.count() == 0 and page.get_by_test_id("job-cancel").is_disabled()


# --- (e) the Playground -------------------------------------------------------------------------


def generate(page: Any, prompt: str, stop: str = "") -> str:
    page.get_by_test_id("prompt").fill(prompt)
    page.locator("details.more").evaluate("d => { d.open = true; }")
    page.get_by_test_id("temperature").fill("0")
    page.get_by_test_id("max-tokens").fill("24")
    page.get_by_test_id("stop-0").fill(stop)
    page.get_by_test_id("submit").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stats\"]').textContent.includes('total')",
        timeout=GENERATION_TIMEOUT,
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
    # A stop string from the output, but not of U+FFFD: a byte-level model's unfinished
    # character is only replaced once the completion ends, after the stop check.
    starts = [i for i in range(1, len(full) - 1) if "\ufffd" not in full[i : i + 2]]
    assert starts, f"no stop string to take from {full!r}"
    start = starts[len(starts) // 2]
    stop = full[start : start + 2]
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


def test_playground_chat_streams_the_reply_into_the_conversation_with_roles(
    page: Any, console: Console
) -> None:
    page.goto("/#/playground")
    page.get_by_test_id("model-select").wait_for()
    model = page.get_by_test_id("model-select").input_value()
    page.get_by_test_id("mode-chat").check()
    system, user = "You rate reviews from 1 to 5.", "review 3: great love works"
    page.get_by_test_id("system").fill(system)
    page.get_by_test_id("message-content").first.fill(user)
    page.locator("details.more").evaluate("d => { d.open = true; }")
    page.get_by_test_id("temperature").fill("0")
    page.get_by_test_id("max-tokens").fill("16")
    page.evaluate(
        """() => {
            window.pieces = 0;  // the pieces of text the assistant's reply arrives in
            new MutationObserver(rs => rs.forEach(r => {
                if (r.target.matches?.('[data-role="assistant"] .content'))
                    window.pieces += r.addedNodes.length;
            })).observe(
                document.querySelector('[data-testid="conversation"]'),
                {childList: true, subtree: true});
        }"""
    )
    page.get_by_test_id("submit").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stats\"]').textContent.includes('total')",
        timeout=GENERATION_TIMEOUT,
    )
    assert page.get_by_role("alert").count() == 0
    messages = page.get_by_test_id("chat-message")
    roles = ["system", "user", "assistant"]
    assert messages.evaluate_all("ms => ms.map(m => m.dataset.role)") == roles
    shown = [r.lower() for r in page.get_by_test_id("chat-role").all_text_contents()]
    assert shown == roles
    texts = page.get_by_test_id("chat-text").all_text_contents()
    assert texts[:2] == [system, user]
    answer = console.call(
        "POST",
        "/v1/chat/completions",
        {
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": 16,
        },
    )
    assert texts[2] and texts[2] == answer["choices"][0]["message"]["content"]
    assert page.evaluate("window.pieces") >= 2  # streamed, not one answer
    assert page.get_by_test_id("output").is_hidden()


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
            .every(s => s.textContent.includes('total'))""",
        timeout=GENERATION_TIMEOUT,
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


# --- (f') evaluations, compare runs -----------------------------------------------------------


def test_evaluate_a_fine_tuned_model_shows_its_metrics_confusion_matrix_and_report(
    page: Any, console: Console, screenshots: Path
) -> None:
    model = fine_tuned_model(console)
    page.goto("/#/data")
    upload_file(page, "test.jsonl", TEST_JSONL)
    page.wait_for_url(re.compile(r"#/data/file-"))
    test_file = page.url.rsplit("/", 1)[1]
    page.goto("/#/evaluations")
    page.get_by_test_id("eval-create").wait_for()
    page.get_by_test_id("eval-model").select_option(model)
    page.get_by_test_id("eval-file").select_option(test_file)
    page.get_by_test_id("eval-limit").fill("8")
    page.get_by_test_id("eval-create").click()
    page.wait_for_url(re.compile(r"#/evaluations/eval-"))
    eval_id = page.url.rsplit("/", 1)[1]
    detail = page.get_by_test_id("evaluation")
    assert eval_id in detail.get_by_role("heading", level=2).inner_text()
    detail.get_by_test_id("status").filter(has_text="running").wait_for()
    assert page.get_by_test_id("eval-cancel").is_visible()
    detail.get_by_test_id("status").filter(has_text="succeeded").wait_for(timeout=120_000)
    page.get_by_test_id("eval-report").wait_for()
    ev = console.call("GET", f"/v1/evaluations/{eval_id}")
    assert ev["status"] == "succeeded" and ev["limit"] == 8 and ev["model"] == model
    (result,) = ev["results"]
    c = result["classification"]
    assert c["labels"] and c["confusion"]

    def check_results() -> dict[str, list[list[str]]]:
        """What the page shows, checked against the API's evaluation object."""
        assert page.get_by_test_id("eval-cancel").count() == 0
        metrics = page.get_by_test_id("eval-metrics")
        head = cells(metrics.locator("thead tr"))
        (row,) = [cells(r) for r in metrics.locator("tbody tr").all()]
        shown = dict(zip(head, row))
        assert shown["Model"] == model  # the id, not the server's folder for it
        assert shown["n"] == fmt(result["n"]) == "8"
        assert shown["Accuracy"] == fmt(c["accuracy"])
        assert shown["Macro F1"] == fmt(c["macro_f1"])
        assert shown["MAE"] == fmt(c.get("mae"))
        confusion = page.get_by_test_id("eval-confusion")
        assert cells(confusion.locator("thead tr"))[1:] == c["labels"]
        body = [cells(r) for r in confusion.locator("tbody tr").all()]
        assert body == [
            [label, *map(str, counts)] for label, counts in zip(c["labels"], c["confusion"])
        ]
        per_class = [
            cells(r) for r in page.get_by_test_id("eval-per-class").locator("tbody tr").all()
        ]
        assert per_class == [
            [k, fmt(v["precision"]), fmt(v["recall"]), fmt(v["f1"]), fmt(v["support"])]
            for k, v in c["per_class"].items()
        ]
        report = page.frame_locator('[data-testid="eval-report"]').locator("body")
        assert "confusion" in report.inner_text().lower()
        return {"metrics": [row], "confusion": body, "per_class": per_class}

    seen = check_results()
    page.screenshot(path=str(screenshots / "evaluation-1280.png"), full_page=True)
    page.reload()
    page.wait_for_url(f"**/#/evaluations/{eval_id}")
    page.get_by_test_id("eval-report").wait_for()
    assert check_results() == seen
    item = page.get_by_test_id("evaluation-item").filter(has_text=eval_id)
    assert "succeeded" in item.inner_text()
    console.shared["evaluation"] = eval_id


def test_compare_runs_plots_two_jobs_loss_curves_and_their_evaluations(
    page: Any, console: Console
) -> None:
    jobs = [console.shared.get("job"), console.shared.get("paused_job")]
    if None in jobs:
        pytest.skip("needs the jobs trained by the tests above")
    page.goto("/#/runs")
    page.get_by_test_id("run-choice").first.wait_for()
    # Both chosen at once (quick clicks): the two redraws overlap, the later one wins.
    page.evaluate(
        """ids => ids.forEach(i =>
            document.querySelector(`[data-testid="run-choice"][value="${i}"]`).click())""",
        jobs,
    )
    page.wait_for_function(  # the choice is kept in the address (replaceState, no navigation)
        "ids => ids.every(i => location.hash.includes(`job=${i}`))", arg=jobs
    )
    wait_for_points(page)
    assert page.get_by_test_id("chart").count() == 1
    labels = page.locator(".u-legend .u-series .u-label").all_inner_texts()
    assert sorted(labels[1:]) == ["paused train", "quick train"]  # one each (no validation)
    steps: set[int] = set()
    for job_id in jobs:
        events = console.call("GET", f"/v1/fine_tuning/jobs/{job_id}/events?limit=1000")
        steps |= {e["data"]["step"] for e in events["data"] if e["type"] == "metrics"}
    assert points(page) == len(steps)
    # Both curves have values under the cursor where both jobs logged a step (every 10th).
    both = (legend_values(page, f / 100) for f in range(5, 40))
    values = next(v for v in both if v["quick train"] and v["paused train"])
    assert float(values["quick train"]) > 0 and float(values["paused train"]) > 0
    evaluation = console.shared.get("evaluation")
    if evaluation:
        rows = page.get_by_test_id("run-eval-row")
        rows.first.wait_for()
        ev = console.call("GET", f"/v1/evaluations/{evaluation}")
        c = ev["results"][0]["classification"]
        row = cells(rows.filter(has_text=evaluation))
        assert row[0] == jobs[0] and row[2] == ev["model"]
        assert row[4:7] == [fmt(c["accuracy"]), fmt(c["macro_f1"]), fmt(c.get("mae"))]
        assert rows.filter(has_text=jobs[1]).count() == 0  # no evaluation of the second
    page.reload()  # the choice is in the address
    wait_for_points(page)
    assert page.locator('[data-testid="run-choice"]:checked').count() == 2


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
        "() => document.querySelector('[data-testid=\"stats\"]').textContent.includes('total')",
        timeout=GENERATION_TIMEOUT,
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
