"""The sweep page in a real browser: a 2-trial sweep trained by the live server's scheduler
shows its trials table (params, value, state, a link to each trial's job page) and the best
trial's curve."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.console.conftest import TRAIN_ROWS, Console

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

SEARCH = {
    "optim.lr": {"low": 1e-3, "high": 3e-2, "log": True},
    "method.lora_r": {"choices": [2, 4]},
}


def run_sweep(console: Console) -> dict[str, Any]:
    """A 2-trial sweep of 4-step LoRA runs, created through the API and run to its end."""
    service = console.service
    ids = []
    for name, rows in (("train.jsonl", TRAIN_ROWS), ("valid.jsonl", TRAIN_ROWS[:8])):
        content = "".join(json.dumps(r) + "\n" for r in rows).encode()
        ids.append(service.upload(name, io.BytesIO(content), "fine-tune")["id"])
    train, valid = ids
    config = {"precision": "fp32", "max_steps": 4, "eval_every": 2, "log_every": 1}
    body = {
        "model": console.base_model,
        "training_file": train,
        "validation_file": valid,
        "seed": 0,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}},
        "trimtab": {"config": config, "sweep": {"trials": 2, "search": SEARCH}},
    }
    job = console.call("POST", "/v1/fine_tuning/jobs", body)
    deadline = time.monotonic() + 300
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
        job = console.call("GET", f"/v1/fine_tuning/jobs/{job['id']}")
    assert job["status"] == "succeeded", job["error"]
    return job


def test_the_sweep_page_shows_the_trials_table_and_the_best_trial_s_curve(
    page: Any, console: Console, screenshots: Path
) -> None:
    job = run_sweep(console)
    trials = console.call("GET", f"/v1/fine_tuning/jobs/{job['id']}/trials")["data"]
    best = job["trimtab"]["best"]
    page.goto(f"/#/jobs/{job['id']}")
    rows = page.get_by_test_id("trial-row")
    rows.nth(1).wait_for()
    assert rows.count() == 2
    headers = page.get_by_test_id("trials-table").locator("th").all_inner_texts()
    assert headers == ["Trial", "optim.lr", "method.lora_r", "valid_loss", "State", "Job"]
    for i, trial in enumerate(trials):
        row = rows.nth(i)
        assert row.get_attribute("data-id") == trial["id"]
        assert f"{trial['trimtab']['value']:.4f}" in row.get_by_test_id("trial-value").inner_text()
        assert str(trial["trimtab"]["params"]["method.lora_r"]) in row.inner_text()
        assert "succeeded" in row.get_by_test_id("status").inner_text()
    best_row = page.locator('[data-testid="trial-row"][data-best="true"]')
    assert best_row.get_attribute("data-id") == best["job_id"]
    assert page.get_by_test_id("fine-tuned-model").inner_text() == job["fine_tuned_model"]
    chart = page.get_by_test_id("chart")
    page.wait_for_function(
        "id => { const c = document.querySelector('[data-testid=chart]');"
        " return c.dataset.job === id && Number(c.dataset.points) > 0 }",
        arg=best["job_id"],
    )
    assert int(chart.get_attribute("data-points")) >= 4  # a point per logged step
    page.screenshot(path=str(screenshots / "sweep-1280.png"), full_page=True)
    # a trial's row links to its own job page, which links back to the sweep
    best_row.get_by_role("link", name=best["job_id"]).click()
    page.wait_for_url(f"**/#/jobs/{best['job_id']}")
    assert f"of {job['id']}" in page.get_by_test_id("job-sweep").inner_text()
    assert page.get_by_test_id("job-cancel").is_disabled()  # a trial is run by its sweep
