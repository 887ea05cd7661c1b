// A sweep job: its trials (each a job of its own), the best trial's live loss and accuracy
// curve, the sweep's events, and Cancel. Polled every second while the sweep runs.
import { api, enc } from "../api.js";
import { align, COLORS, lineChart } from "../chart.js";
import { EventLog } from "../metrics.js";
import { errorBox, fmt, fmtTime, h, replace, showError, status } from "../ui.js";

const ACTIVE = ["validating_files", "queued", "running", "paused"];

/** The best trial: the sweep's own choice once it succeeded, else the best value so far. */
export function bestTrial(sweep, trials) {
  const chosen = sweep.trimtab && sweep.trimtab.best;
  if (chosen && chosen.job_id) return trials.find((t) => t.id === chosen.job_id) || null;
  const maximize = ((sweep.trimtab || {}).sweep || {}).direction === "maximize";
  const scored = trials.filter((t) => t.trimtab.state === "complete" && typeof t.trimtab.value === "number");
  scored.sort((a, b) => (maximize ? b.trimtab.value - a.trimtab.value : a.trimtab.value - b.trimtab.value));
  return scored[0] || null;
}

export function sweep(main, { parts, signal }) {
  const jobId = parts[1];
  const errors = errorBox();
  const head = h("div", { class: "job-head" });
  const failure = h("div", {});
  const cancel = h("button", { type: "button", class: "danger", testid: "job-cancel", disabled: true }, "Cancel sweep");
  const table = h("tbody", {});
  const tableHead = h("thead", {});
  const bestNote = h("p", { testid: "best-trial" }, "No trial has finished yet.");
  const chartBox = h("div", { class: "chart-box" });
  const events = h("ol", { class: "events", testid: "events", reversed: true });
  main.append(
    h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
    h("h1", {}, "Sweep ", h("code", {}, jobId)),
    errors,
    head,
    failure,
    h("div", { class: "row" }, cancel),
    h(
      "section",
      { "aria-labelledby": "trials-h" },
      h("h2", { id: "trials-h" }, "Trials"),
      h("div", { class: "table-wrap" }, h("table", { testid: "trials-table" }, tableHead, table)),
    ),
    h("div", { class: "split" }, h("section", { "aria-labelledby": "best-h" }, h("h2", { id: "best-h" }, "Best trial"), bestNote, chartBox), h("section", { "aria-labelledby": "ev-h" }, h("h2", { id: "ev-h" }, "Events"), events)),
  );
  const chart = lineChart(chartBox, {
    title: "Best trial: loss and accuracy by step",
    y2label: "accuracy",
    series: [
      { label: "train loss", color: COLORS[0] },
      { label: "valid loss", color: COLORS[1] },
      { label: "train accuracy", color: COLORS[2], scale: "acc", dash: [6, 4] },
      { label: "valid accuracy", color: COLORS[3], scale: "acc", dash: [6, 4] },
    ],
  });
  const parentLog = new EventLog(jobId);
  let bestLog = null;

  function showSweep(s) {
    const section = (s.trimtab && s.trimtab.sweep) || {};
    replace(
      head,
      h("p", {}, "Status: ", status(s.status), ` · ${section.trials || "?"} trials · metric ${section.metric || "valid_loss"} (${section.direction === "maximize" ? "higher" : "lower"} is better) · created ${fmtTime(s.created_at)}`),
      s.fine_tuned_model
        ? h("p", {}, "Best model: ", h("code", { testid: "fine-tuned-model" }, s.fine_tuned_model), " ", h("a", { class: "button", href: `#/playground?model=${enc(s.fine_tuned_model)}`, testid: "open-model" }, "Open in Playground"))
        : null,
    );
    if (s.status === "failed" && s.error) replace(failure, h("div", { role: "alert", class: "error", testid: "job-error" }, h("strong", {}, "The sweep failed: "), s.error.message || JSON.stringify(s.error)));
    else failure.replaceChildren();
    cancel.disabled = !ACTIVE.includes(s.status);
  }

  function showTrials(s, trials, best) {
    const keys = Object.keys(((s.trimtab || {}).sweep || {}).search || {});
    const metric = ((s.trimtab || {}).sweep || {}).metric || "valid_loss";
    replace(tableHead, h("tr", {}, ["Trial", ...keys, metric, "State", "Job"].map((c) => h("th", { scope: "col" }, c))));
    replace(
      table,
      trials.length
        ? trials.map((t) => {
            const ext = t.trimtab || {};
            const isBest = best && best.id === t.id;
            return h(
              "tr",
              { testid: "trial-row", "data-id": t.id, "data-trial": ext.sweep_trial, "data-best": isBest ? "true" : null, class: isBest ? "best" : null },
              h("td", {}, String(ext.sweep_trial), isBest ? h("strong", {}, " ★ best") : null),
              keys.map((k) => h("td", {}, fmt((ext.params || {})[k], 5))),
              h("td", { testid: "trial-value" }, fmt(ext.value, 4)),
              h("td", {}, status(t.status), ext.state && ext.state !== "complete" ? h("small", {}, ` ${ext.state}`) : null),
              h("td", {}, h("a", { href: `#/jobs/${enc(t.id)}` }, t.id)),
            );
          })
        : h("tr", {}, h("td", { colspan: keys.length + 4 }, "No trial has started yet.")),
    );
  }

  async function showBest(best, metric) {
    if (!best) return;
    if (!bestLog || bestLog.jobId !== best.id) bestLog = new EventLog(best.id);
    replace(bestNote, "Trial ", h("strong", {}, String(best.trimtab.sweep_trial)), ` (${metric} ${fmt(best.trimtab.value, 4)}): `, h("a", { href: `#/jobs/${enc(best.id)}` }, best.id));
    await bestLog.poll(signal);
    const m = bestLog.metrics();
    const [xs, ys] = align([m.train_loss, m.valid_loss, m.train_acc, m.valid_acc]);
    chart.set(xs, ys);
    chart.holder.dataset.job = best.id;
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      showSweep(await api(`/v1/fine_tuning/jobs/${enc(jobId)}/cancel`, { method: "POST", signal }));
      showError(errors, null);
    } catch (e) {
      if (e.name !== "AbortError") showError(errors, e, "Could not cancel the sweep");
    }
  });

  let timer = null;
  let stopped = false;
  async function tick() {
    try {
      const [s, trials, fresh] = await Promise.all([api(`/v1/fine_tuning/jobs/${enc(jobId)}`, { signal }), api(`/v1/fine_tuning/jobs/${enc(jobId)}/trials`, { signal }), parentLog.poll(signal)]);
      for (const e of fresh) events.prepend(h("li", { class: `event event-${e.level}`, testid: "event" }, h("time", {}, fmtTime(e.created_at)), " ", e.message));
      const best = bestTrial(s, trials.data);
      showSweep(s);
      showTrials(s, trials.data, best);
      await showBest(best, ((s.trimtab || {}).sweep || {}).metric || "valid_loss");
      showError(errors, null);
      if (!ACTIVE.includes(s.status)) return; // finished: nothing more will come
    } catch (e) {
      if (e.name === "AbortError") return;
      showError(errors, e, "Could not read the sweep");
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
