// A job: its live loss and accuracy chart, events, checkpoints, and Cancel/Pause/Resume.
import { api, enc } from "../api.js";
import { align, COLORS, ema, lineChart } from "../chart.js";
import { EventLog } from "../metrics.js";
import { errorBox, fmt, fmtTime, h, replace, showError, status } from "../ui.js";

const ACTIVE = ["validating_files", "queued", "running", "paused"];

export function job(main, { parts, signal }) {
  const jobId = parts[1];
  const errors = errorBox();
  const head = h("div", { class: "job-head" });
  const failure = h("div", {});
  const buttons = {
    cancel: h("button", { type: "button", class: "danger", testid: "job-cancel", disabled: true }, "Cancel"),
    pause: h("button", { type: "button", class: "secondary", testid: "job-pause", disabled: true }, "Pause"),
    resume: h("button", { type: "button", class: "secondary", testid: "job-resume", disabled: true }, "Resume"),
  };
  const smoothing = h("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: 0, testid: "smoothing" });
  const smoothingValue = h("output", { for: "smoothing" }, "0.00");
  const chartBox = h("div", { class: "chart-box" });
  const checkpoints = h("ul", { class: "checkpoints", testid: "checkpoints" });
  const events = h("ol", { class: "events", testid: "events", reversed: true });
  const details = h("dl", { class: "details", testid: "job-details" });
  let current = null;

  main.append(
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    h("h1", {}, "Job ", h("code", {}, jobId)),
    errors,
    head,
    failure,
    h("div", { class: "row" }, buttons.cancel, buttons.pause, buttons.resume),
    h(
      "section",
      { "aria-labelledby": "curve-h" },
      h("h2", { id: "curve-h" }, "Training curves"),
      h("div", { class: "field inline-field" }, h("label", { for: "smoothing" }, "Smoothing (exponential moving average)"), smoothing, smoothingValue),
      chartBox,
    ),
    h("div", { class: "split" }, h("section", { "aria-labelledby": "ck-h" }, h("h2", { id: "ck-h" }, "Checkpoints"), checkpoints, h("h2", {}, "Details"), details), h("section", { "aria-labelledby": "ev-h" }, h("h2", { id: "ev-h" }, "Events"), events)),
  );
  smoothing.id = "smoothing";
  const chart = lineChart(chartBox, {
    title: "Loss and accuracy by step",
    y2label: "accuracy",
    series: [
      { label: "train loss", color: COLORS[0] },
      { label: "valid loss", color: COLORS[1] },
      { label: "train accuracy", color: COLORS[2], scale: "acc", dash: [6, 4] },
      { label: "valid accuracy", color: COLORS[3], scale: "acc", dash: [6, 4] },
    ],
  });
  const log = new EventLog(jobId);

  function draw() {
    const m = log.metrics();
    const a = Number(smoothing.value);
    const [xs, ys] = align([m.train_loss, m.valid_loss, m.train_acc, m.valid_acc]);
    chart.set(xs, ys.map((y) => ema(y, a)));
    chart.holder.dataset.step = String(m.step);
  }
  smoothing.addEventListener("input", () => {
    smoothingValue.textContent = Number(smoothing.value).toFixed(2);
    draw();
  });

  function showJob(j) {
    current = j;
    const m = log.metrics();
    replace(
      head,
      h("p", {}, "Status: ", status(j.status), m.total ? h("span", { testid: "job-step" }, ` step ${m.step}/${m.total}`) : null, j.estimated_finish ? ` · estimated finish ${fmtTime(j.estimated_finish)}` : ""),
      j.fine_tuned_model
        ? h("p", {}, "Fine-tuned model: ", h("code", { testid: "fine-tuned-model" }, j.fine_tuned_model), " ", h("a", { class: "button", href: `#/playground?model=${enc(j.fine_tuned_model)}`, testid: "open-model" }, "Open in Playground"))
        : null,
    );
    if (j.status === "failed" && j.error) {
      replace(failure, h("div", { role: "alert", class: "error", testid: "job-error" }, h("strong", {}, "The job failed: "), j.error.message || JSON.stringify(j.error), j.error.param ? ` (${j.error.param})` : ""));
    } else failure.replaceChildren();
    const trial = Boolean(j.trimtab && j.trimtab.parent_id); // run by its sweep: act on the sweep
    buttons.cancel.disabled = trial || !ACTIVE.includes(j.status);
    buttons.pause.disabled = trial || (j.status !== "running" && j.status !== "queued");
    buttons.resume.disabled = j.status !== "paused";
    const hp = j.hyperparameters || {};
    const rows = [
      ["Base model", j.model],
      ["Training file", j.training_file],
      ["Validation file", j.validation_file || "—"],
      ["Method", j.trimtab ? `${j.trimtab.method} · task ${j.trimtab.task}` : "—"],
      ["Epochs", fmt(hp.n_epochs)],
      ["Batch size", fmt(hp.batch_size)],
      ["Learning rate multiplier", fmt(hp.learning_rate_multiplier)],
      ["Seed", fmt(j.seed)],
      ...(j.trimtab && j.trimtab.parent_id ? [["Sweep", h("span", { testid: "job-sweep" }, `trial ${j.trimtab.sweep_trial} of `, h("a", { href: `#/jobs/${enc(j.trimtab.parent_id)}` }, j.trimtab.parent_id))], ["Trial params", Object.entries(j.trimtab.params || {}).map(([k, v]) => `${k}=${fmt(v, 5)}`).join(", ")]] : []),
      ["Trained tokens", fmt(j.trained_tokens)],
      ["Created", fmtTime(j.created_at)],
      ["Finished", fmtTime(j.finished_at)],
    ];
    replace(details, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  for (const [action, button] of Object.entries(buttons)) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        showJob(await api(`/v1/fine_tuning/jobs/${enc(jobId)}/${action}`, { method: "POST", signal }));
        showError(errors, null);
      } catch (e) {
        if (e.name !== "AbortError") showError(errors, e, `Could not ${action} the job`);
        if (current) showJob(current);
      }
    });
  }

  let timer = null;
  let stopped = false;
  async function tick() {
    try {
      const [j, fresh, ck] = await Promise.all([
        api(`/v1/fine_tuning/jobs/${enc(jobId)}`, { signal }),
        log.poll(signal),
        api(`/v1/fine_tuning/jobs/${enc(jobId)}/checkpoints?limit=100`, { signal }),
      ]);
      for (const e of fresh) events.prepend(h("li", { class: `event event-${e.level}`, testid: "event", "data-type": e.type }, h("time", {}, fmtTime(e.created_at)), " ", e.message));
      if (fresh.length) draw();
      showJob(j);
      replace(
        checkpoints,
        ck.data.length
          ? ck.data.map((c) =>
              h(
                "li",
                { testid: "checkpoint", "data-model": c.fine_tuned_model_checkpoint },
                `step ${c.step_number}: `,
                h("code", {}, c.fine_tuned_model_checkpoint),
                c.metrics && c.metrics.train_loss !== undefined ? ` · train loss ${fmt(c.metrics.train_loss)}` : "",
                " ",
                h("a", { class: "button small", href: `#/playground?model=${enc(c.fine_tuned_model_checkpoint)}` }, "Open in Playground"),
              ),
            )
          : h("li", {}, "No checkpoints yet."),
      );
      showError(errors, null);
      if (!ACTIVE.includes(j.status)) return; // finished: nothing more will come
    } catch (e) {
      if (e.name === "AbortError") return;
      showError(errors, e, "Could not read the job");
      if (e.status === 404) return;
    }
    if (!stopped) timer = setTimeout(tick, 1000);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
    chart.destroy();
  };
}

