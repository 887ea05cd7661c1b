// Evaluations: start one (model, test file, limit); its metrics, confusion matrix, report.
import { api, enc, text } from "../api.js";
import { errorBox, field, fmt, fmtTime, h, modelSelect, replace, showError, status } from "../ui.js";

export function evaluations(main, { parts, signal }) {
  const evalId = parts[1];
  const errors = errorBox();
  const formBox = h("section", { "aria-labelledby": "ne-h" }, h("h2", { id: "ne-h" }, "New evaluation"), h("p", {}, "Loading…"));
  const list = h("ul", { class: "files", testid: "evaluation-list" });
  const detail = h("section", { class: "evaluation", testid: "evaluation", "aria-labelledby": "ed-h" });
  main.append(h("h1", {}, "Evaluations"), errors, h("div", { class: "split" }, formBox, h("section", { "aria-labelledby": "el-h" }, h("h2", { id: "el-h" }, "Evaluations"), list)), detail);

  Promise.all([api("/v1/models", { signal }), api("/v1/files?purpose=fine-tune", { signal })])
    .then(([models, files]) => {
      const model = modelSelect(models.data, { testid: "eval-model" });
      const file = h("select", { testid: "eval-file" }, files.data.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`)));
      const limit = h("input", { type: "number", min: 1, step: 1, testid: "eval-limit", placeholder: "all" });
      const submit = h("button", { type: "submit", testid: "eval-create" }, "Start evaluation");
      const formErrors = errorBox();
      const form = h("form", {}, formErrors, field("Model", model), field("Test file", file), field("Limit (examples, optional)", limit), submit);
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        showError(formErrors, null);
        if (!file.value) return showError(formErrors, new Error("Upload a test file on the Data page first."));
        const body = { model: model.value, file: file.value };
        if (limit.value) body.limit = Number(limit.value);
        submit.disabled = true;
        try {
          const made = await api("/v1/evaluations", { method: "POST", body, signal });
          location.hash = `#/evaluations/${enc(made.id)}`;
        } catch (err) {
          if (err.name !== "AbortError") showError(formErrors, err, "The evaluation was refused");
        } finally {
          submit.disabled = false;
        }
      });
      replace(formBox, h("h2", { id: "ne-h" }, "New evaluation"), form);
    })
    .catch((e) => e.name !== "AbortError" && showError(errors, e, "Could not load the models and files"));

  api("/v1/evaluations", { signal })
    .then((page) => {
      replace(
        list,
        page.data.length
          ? page.data.map((ev) => h("li", { testid: "evaluation-item" }, h("a", { href: `#/evaluations/${enc(ev.id)}` }, ev.id), " ", status(ev.status), h("small", {}, ` ${ev.model} · ${ev.file} · ${fmtTime(ev.created_at)}`)))
          : h("li", {}, "No evaluations yet."),
      );
    })
    .catch((e) => e.name !== "AbortError" && showError(errors, e, "Could not list the evaluations"));

  if (!evalId) return undefined;
  let timer = null;
  let reportShown = false;
  const cancel = h("button", { type: "button", class: "danger", testid: "eval-cancel" }, "Cancel");
  const body = h("div", {});
  const report = h("div", {});
  replace(detail, h("h2", { id: "ed-h" }, "Evaluation ", h("code", {}, evalId)), body, report);
  cancel.addEventListener("click", async () => {
    try {
      await api(`/v1/evaluations/${enc(evalId)}/cancel`, { method: "POST", signal });
      tick();
    } catch (e) {
      if (e.name !== "AbortError") showError(errors, e, "Could not cancel the evaluation");
    }
  });
  async function tick() {
    clearTimeout(timer);
    try {
      const ev = await api(`/v1/evaluations/${enc(evalId)}`, { signal });
      replace(body, renderEvaluation(ev, cancel));
      if (ev.status === "running") timer = setTimeout(tick, 2000);
      else if (ev.status === "succeeded" && !reportShown) {
        reportShown = true;
        const html = await text(`/v1/evaluations/${enc(evalId)}/report`, { signal });
        replace(report, h("h3", {}, "Report"), h("iframe", { class: "report-frame", title: "Evaluation report", srcdoc: html, sandbox: "", testid: "eval-report" }));
      }
    } catch (e) {
      if (e.name !== "AbortError") showError(errors, e, "Could not read the evaluation");
    }
  }
  tick();
  return () => clearTimeout(timer);
}

function renderEvaluation(ev, cancel) {
  const out = [
    h("p", {}, "Status: ", status(ev.status), ` · model ${ev.model} · file ${ev.file}${ev.limit ? ` · limit ${ev.limit}` : ""} · started ${fmtTime(ev.created_at)}`, ev.finished_at ? ` · finished ${fmtTime(ev.finished_at)}` : ""),
  ];
  if (ev.status === "running") out.push(cancel);
  if (ev.error) out.push(h("div", { role: "alert", class: "error", testid: "eval-error" }, `The evaluation failed: ${ev.error.message}`));
  const results = ev.results || [];
  if (!results.length) return out;
  // The model is the id evaluated: a result's own "model" is the folder path the server gave
  // trimtab eval (every result is of that one model, by kind: fine-tuned, zero-shot, few-shot).
  out.push(
    h("h3", {}, "Metrics"),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { testid: "eval-metrics" },
        h("thead", {}, h("tr", {}, ["Label", "Model", "n", "Seconds", "Accuracy", "Macro F1", "MAE"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, results.map((r) => h("tr", {}, h("td", {}, r.label), h("td", {}, ev.model), h("td", {}, fmt(r.n)), h("td", {}, fmt(r.seconds, 1)), h("td", {}, fmt(r.classification && r.classification.accuracy)), h("td", {}, fmt(r.classification && r.classification.macro_f1)), h("td", {}, fmt(r.classification && r.classification.mae))))),
      ),
    ),
  );
  for (const r of results) {
    const c = r.classification;
    if (!c) continue;
    const labels = c.labels || Object.keys(c.per_class || {});
    out.push(h("h3", {}, `${r.label}: per class`));
    out.push(
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { testid: "eval-per-class" },
          h("thead", {}, h("tr", {}, ["Class", "Precision", "Recall", "F1", "Support"].map((x) => h("th", { scope: "col" }, x)))),
          h("tbody", {}, Object.entries(c.per_class || {}).map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, fmt(v.precision)), h("td", {}, fmt(v.recall)), h("td", {}, fmt(v.f1)), h("td", {}, fmt(v.support))))),
        ),
      ),
    );
    if (c.confusion) {
      const most = Math.max(1, ...c.confusion.flat());
      out.push(
        h("h3", {}, `${r.label}: confusion matrix`),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "confusion", testid: "eval-confusion" },
            h("caption", {}, "Rows: true label; columns: predicted"),
            h("thead", {}, h("tr", {}, h("td", {}), labels.map((l) => h("th", { scope: "col" }, l)))),
            h("tbody", {}, c.confusion.map((rowv, i) => h("tr", {}, h("th", { scope: "row" }, labels[i] ?? i), rowv.map((v) => h("td", { style: { background: `rgba(37, 99, 235, ${(0.6 * v) / most})` } }, v))))),
          ),
        ),
      );
    }
  }
  return out;
}
