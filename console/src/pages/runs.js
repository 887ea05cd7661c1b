// Compare runs: several jobs' loss curves on one chart, and their evaluations side by side.
import { all, api } from "../api.js";
import { align, COLORS, lineChart } from "../chart.js";
import { EventLog } from "../metrics.js";
import { errorBox, fmt, h, replace, showError } from "../ui.js";

export function runs(main, { query, signal }) {
  const errors = errorBox();
  const choices = h("fieldset", { class: "choices", testid: "run-choices" }, h("legend", {}, "Jobs"), h("p", {}, "Loading jobs…"));
  const chartBox = h("div", { class: "chart-box" });
  const evals = h("div", { class: "table-wrap", testid: "run-evaluations" });
  let chart = null;
  main.append(
    h("h1", {}, "Compare runs"),
    errors,
    choices,
    h("section", { "aria-labelledby": "rc-h" }, h("h2", { id: "rc-h" }, "Training loss"), chartBox),
    h("section", { "aria-labelledby": "re-h" }, h("h2", { id: "re-h" }, "Evaluations"), evals),
  );
  let jobs = [];
  let shown = 0; // the latest show(): an earlier one still awaiting draws nothing

  async function show() {
    const mine = ++shown;
    const chosen = [...choices.querySelectorAll("input:checked")].map((c) => jobs.find((j) => j.id === c.value));
    const ids = chosen.map((j) => j.id);
    history.replaceState(null, "", `#/runs${ids.length ? `?${ids.map((i) => `job=${encodeURIComponent(i)}`).join("&")}` : ""}`);
    if (chart) chart.destroy();
    chartBox.replaceChildren();
    chart = null;
    evals.replaceChildren();
    if (!chosen.length) {
      chartBox.append(h("p", {}, "Choose jobs to compare."));
      return;
    }
    try {
      const logs = await Promise.all(
        chosen.map(async (j) => {
          const log = new EventLog(j.id);
          await log.poll(signal);
          return log.metrics();
        }),
      );
      if (mine !== shown) return;
      // A job's training curve, and its validation curve when it has one.
      const curves = chosen.flatMap((j, i) => [
        { label: `${j.user_provided_suffix || j.id} train`, color: COLORS[i % COLORS.length], points: logs[i].train_loss },
        { label: `${j.user_provided_suffix || j.id} valid`, color: COLORS[i % COLORS.length], dash: [6, 4], points: logs[i].valid_loss },
      ]).filter((c) => c.points.size);
      if (!curves.length) {
        chartBox.append(h("p", {}, "No training metrics yet for these jobs."));
      } else {
        chart = lineChart(chartBox, { title: "Loss by step", series: curves });
        const [xs, ys] = align(curves.map((c) => c.points));
        chart.set(xs, ys);
      }
    } catch (e) {
      if (e.name !== "AbortError") showError(errors, e, "Could not read the jobs' metrics");
    }
    try {
      const list = await all("/v1/evaluations", { signal });
      if (mine !== shown) return;
      const rows = [];
      for (const j of chosen) {
        const models = new Set([j.fine_tuned_model].filter(Boolean));
        for (const ev of list.filter((e) => models.has(e.model) || (j.fine_tuned_model && (e.model || "").startsWith(`${j.fine_tuned_model}:`)))) {
          // Every result is of the model evaluated (its kinds aside: zero-shot, few-shot);
          // a result's own "model" is what the server gave trimtab eval, a folder path.
          for (const r of ev.results || []) {
            const c = r.classification || {};
            rows.push(h("tr", { testid: "run-eval-row" }, h("td", {}, j.id), h("td", {}, h("a", { href: `#/evaluations/${encodeURIComponent(ev.id)}` }, ev.id)), h("td", {}, ev.model), h("td", {}, fmt(r.n)), h("td", {}, fmt(c.accuracy)), h("td", {}, fmt(c.macro_f1)), h("td", {}, fmt(c.mae))));
          }
        }
      }
      replace(
        evals,
        rows.length
          ? h("table", {}, h("thead", {}, h("tr", {}, ["Job", "Evaluation", "Model", "n", "Accuracy", "Macro F1", "MAE"].map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, rows))
          : h("p", {}, "No evaluations of these jobs' models yet: start one on the Evaluations page."),
      );
    } catch (e) {
      if (e.name !== "AbortError") showError(evals, e, "Could not list the evaluations");
    }
  }

  api("/v1/fine_tuning/jobs?limit=100", { signal })
    .then((page) => {
      jobs = page.data;
      const wanted = query.getAll("job");
      const items = jobs.map((j) =>
        h("label", { class: "inline" }, h("input", { type: "checkbox", value: j.id, testid: "run-choice", checked: wanted.includes(j.id), onchange: show }), `${j.id}${j.user_provided_suffix ? ` (${j.user_provided_suffix})` : ""} · ${j.status}`),
      );
      choices.replaceChildren(h("legend", {}, "Jobs"), ...(items.length ? items : [h("p", {}, "No jobs yet.")]));
      show();
    })
    .catch((e) => e.name !== "AbortError" && showError(errors, e, "Could not list the jobs"));
  return () => chart && chart.destroy();
}
