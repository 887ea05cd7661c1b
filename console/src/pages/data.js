// Data: upload a .jsonl, read its report (checks, labels, token lengths); the uploaded files.
import { api, enc } from "../api.js";
import { errorBox, field, fmt, fmtTime, h, isBase, modelSelect, replace, showError } from "../ui.js";

const SVG = "http://www.w3.org/2000/svg";

export function data(main, { parts, query, signal }) {
  const fileId = parts[1];
  const errors = errorBox();
  const input = h("input", { type: "file", accept: ".jsonl,application/jsonl", testid: "file-input" });
  const drop = h(
    "div",
    { class: "drop", testid: "drop-zone" },
    h("p", {}, "Drop a .jsonl file here, or choose one:"),
    field("Training data (.jsonl)", input),
  );
  const progress = h("p", { class: "hint", "aria-live": "polite" });
  const list = h("ul", { class: "files", testid: "file-list" });
  const report = h("section", { class: "report", testid: "report", "aria-labelledby": "report-h" });

  async function upload(file) {
    showError(errors, null);
    if (!file) return;
    progress.textContent = `Uploading ${file.name}…`;
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file, file.name);
    try {
      const made = await api("/v1/files", { method: "POST", body: form, signal });
      progress.textContent = `Uploaded ${made.filename} as ${made.id}.`;
      input.value = "";
      location.hash = `#/data/${enc(made.id)}`;
    } catch (e) {
      progress.textContent = "";
      if (e.name !== "AbortError") showError(errors, e, `Upload of ${file.name} refused`);
    }
  }
  input.addEventListener("change", () => upload(input.files[0]));
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(e.dataTransfer.files[0]);
  });

  main.append(
    h("h1", {}, "Data"),
    errors,
    h("section", { "aria-labelledby": "up-h" }, h("h2", { id: "up-h" }, "Upload"), drop, progress),
    h("div", { class: "split" }, h("section", { "aria-labelledby": "files-h" }, h("h2", { id: "files-h" }, "Uploaded files"), list), report),
  );

  api("/v1/files?purpose=fine-tune", { signal })
    .then((page) => {
      if (!page.data.length) list.append(h("li", {}, "No files yet."));
      for (const f of page.data) {
        list.append(
          h(
            "li",
            { testid: "file-item", "data-id": f.id },
            h("a", { href: `#/data/${enc(f.id)}`, "aria-current": f.id === fileId ? "true" : null }, f.filename),
            h("small", {}, ` ${f.id} · ${f.bytes} bytes · ${fmtTime(f.created_at)}`),
          ),
        );
      }
    })
    .catch((e) => e.name !== "AbortError" && showError(errors, e, "Could not list the files"));

  if (!fileId) {
    report.append(h("h2", { id: "report-h" }, "Report"), h("p", {}, "Upload a file or open one to see its report."));
    return;
  }
  report.append(h("h2", { id: "report-h" }, `Report: ${fileId}`), h("p", {}, "Loading…"));
  api("/v1/models", { signal })
    .then((models) => {
      const select = modelSelect(models.data, { filter: isBase, selected: query.get("model"), testid: "report-model" });
      const body = h("div", {});
      const reportErrors = errorBox();
      replace(report, h("h2", { id: "report-h" }, `Report: ${fileId}`), field("Tokenizer of model", select), reportErrors, body);
      const load = () => {
        showError(reportErrors, null);
        replace(body, h("p", {}, "Loading the report…"));
        api(`/v1/files/${enc(fileId)}/report?model=${enc(select.value)}`, { signal })
          .then((r) => replace(body, renderReport(r)))
          .catch((e) => {
            if (e.name === "AbortError") return;
            body.replaceChildren();
            showError(reportErrors, e, "Could not build the report");
          });
      };
      select.addEventListener("change", load);
      load();
    })
    .catch((e) => e.name !== "AbortError" && showError(errors, e, "Could not list the models"));
}

function renderReport(r) {
  const out = [
    h("p", { testid: "report-summary" }, `${r.filename} · ${r.examples} examples · format ${r.format || "—"} · task ${r.task || "—"}`),
    h("h3", {}, "Checks"),
    h(
      "ul",
      { class: "checks", testid: "checks" },
      (r.checks || []).map((c) =>
        h(
          "li",
          { class: `check check-${c.status}`, testid: "check", "data-status": c.status, "data-check": c.id },
          h("span", { class: `badge badge-${c.status}` }, c.status),
          " ",
          h("strong", {}, c.title),
          c.count ? ` (${c.count})` : "",
          h("p", {}, c.message),
          c.locations && c.locations.length ? h("p", { class: "locations", testid: "check-locations" }, "At: ", c.locations.join(", ")) : null,
          c.fix ? h("p", { class: "fix", testid: "check-fix" }, `Fix${c.fix.recommended ? " (recommended)" : ""}: ${c.fix.description}`, h("code", {}, ` ${c.fix.id}`)) : null,
        ),
      ),
    ),
  ];
  if (r.labels && Object.keys(r.labels).length) out.push(h("h3", {}, "Label balance"), labelChart(r.labels));
  if (r.token_lengths) out.push(h("h3", {}, "Token lengths"), histogram(r.token_lengths));
  return out;
}

function labelChart(labels) {
  const entries = Object.entries(labels).sort((a, b) => b[1] - a[1]);
  const most = Math.max(...entries.map((e) => e[1]), 1);
  const total = entries.reduce((s, e) => s + e[1], 0);
  return h(
    "table",
    { class: "bars", testid: "label-chart" },
    h("caption", {}, `Examples per label (${total} in all)`),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Label"), h("th", { scope: "col" }, "Examples"))),
    h(
      "tbody",
      {},
      entries.map(([label, count]) =>
        h(
          "tr",
          { testid: "label-bar", "data-label": label, "data-count": count },
          h("th", { scope: "row" }, JSON.stringify(label)),
          h("td", {}, h("span", { class: "bar", style: { width: `${(100 * count) / most}%` } }), h("span", { class: "bar-value" }, `${count} (${((100 * count) / total).toFixed(0)}%)`)),
        ),
      ),
    ),
  );
}

function histogram(t) {
  const counts = t.counts || [];
  const edges = t.edges || [];
  const most = Math.max(...counts, 1);
  const width = 600;
  const height = 160;
  const bw = width / Math.max(counts.length, 1);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 20}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("class", "histogram");
  svg.dataset.testid = "token-histogram";
  const label = `Token lengths (${t.tokenizer || "tokenizer"}): mean ${fmt(t.mean, 1)}, max ${t.max}${t.over_context ? `, ${t.over_context} over the context` : ""}`;
  svg.setAttribute("aria-label", label);
  counts.forEach((c, i) => {
    const bh = (height * c) / most;
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", String(i * bw + 1));
    rect.setAttribute("y", String(height - bh));
    rect.setAttribute("width", String(Math.max(bw - 2, 1)));
    rect.setAttribute("height", String(bh));
    rect.dataset.testid = "hist-bar";
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${fmt(edges[i], 0)}–${fmt(edges[i + 1], 0)} tokens: ${c}`;
    rect.append(title);
    svg.append(rect);
  });
  for (const [x, anchor, text] of [[0, "start", fmt(edges[0], 0)], [width, "end", fmt(edges[edges.length - 1], 0)]]) {
    const tx = document.createElementNS(SVG, "text");
    tx.setAttribute("x", String(x));
    tx.setAttribute("y", String(height + 16));
    tx.setAttribute("text-anchor", anchor);
    tx.textContent = `${text} tokens`;
    svg.append(tx);
  }
  return h("figure", {}, svg, h("figcaption", {}, label));
}
