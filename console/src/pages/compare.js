// Compare: the same prompt to several models at once, side by side.
import { api } from "../api.js";
import { generate, formatStats } from "../gen.js";
import { promptInput, samplingControls } from "../params.js";
import { errorBox, h, isBase, onSubmit, showError } from "../ui.js";

export function compare(main, { query, signal }) {
  const errors = errorBox();
  const choices = h("fieldset", { class: "choices", testid: "compare-models" }, h("legend", {}, "Models (choose two or more)"), h("p", {}, "Loading models…"));
  const input = promptInput();
  const sampling = samplingControls();
  const submit = h("button", { type: "submit", testid: "compare-submit" }, "Run on all");
  const stop = h("button", { type: "button", class: "secondary", disabled: true, testid: "compare-stop" }, "Stop");
  const columns = h("div", { class: "columns", testid: "compare-results" });
  let running = null;

  const form = h("form", {}, choices, input.element, h("details", { class: "more" }, h("summary", {}, "Sampling options"), sampling.element), h("div", { class: "row" }, submit, stop));
  onSubmit(form, run);
  stop.addEventListener("click", () => running && running.abort());
  signal.addEventListener("abort", () => running && running.abort());

  async function run() {
    if (running) return;
    showError(errors, null);
    const models = [...choices.querySelectorAll("input:checked")].map((c) => c.value);
    let base;
    try {
      if (!models.length) throw new Error("Choose at least one model.");
      base = { ...input.read(), params: sampling.read(), logprobs: null };
    } catch (e) {
      showError(errors, e);
      return;
    }
    running = new AbortController();
    submit.disabled = true;
    stop.disabled = false;
    columns.replaceChildren();
    await Promise.all(
      models.map(async (model) => {
        const output = h("pre", { class: "output", testid: "compare-output" });
        const stats = h("p", { class: "stats", testid: "compare-stats" }, "Generating…");
        const box = errorBox();
        columns.append(h("section", { class: "column", testid: "compare-column", "data-model": model }, h("h2", { class: "model-name" }, model), output, stats, box));
        try {
          const result = await generate({ ...base, model }, { onText: (t) => output.append(t), signal: running.signal });
          stats.textContent = formatStats(result);
        } catch (e) {
          stats.textContent = e.name === "AbortError" ? "Stopped." : "";
          if (e.name !== "AbortError") showError(box, e, "Failed");
        }
      }),
    );
    running = null;
    submit.disabled = false;
    stop.disabled = true;
  }

  main.append(h("h1", {}, "Compare models"), errors, form, columns);

  api("/v1/models", { signal })
    .then((list) => {
      const wanted = query.getAll("model");
      const items = list.data.map((m, i) =>
        h(
          "label",
          { class: "inline" },
          h("input", { type: "checkbox", value: m.id, testid: "compare-model", checked: wanted.length ? wanted.includes(m.id) : i < 2 }),
          `${m.id}${isBase(m) ? " (base)" : ""}`,
        ),
      );
      choices.replaceChildren(h("legend", {}, "Models (choose two or more)"), ...items);
    })
    .catch((e) => e.name !== "AbortError" && showError(errors, e, "Could not list the models"));
}
