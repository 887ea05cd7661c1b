// Jobs: the create form (jobs queue one after another) and the list, refreshed every 2 s.
import { api, enc } from "../api.js";
import { progressOf } from "../metrics.js";
import { errorBox, field, fmtTime, h, isBase, modelSelect, replace, showError, status } from "../ui.js";

const ACTIVE = ["validating_files", "queued", "running", "paused"];

/** "auto" or a number, for a hyperparameter field. */
function hyper(input, name, integer) {
  const v = input.value.trim();
  if (v === "" || v === "auto") return "auto";
  const n = Number(v);
  if (Number.isNaN(n) || n <= 0 || (integer && !Number.isInteger(n))) throw new Error(`${name}: "auto" or a positive ${integer ? "integer" : "number"}.`);
  return n;
}

/** "key=value" lines → {key: value}; values read as JSON when they are JSON. */
export function parseConfig(text) {
  const config = {};
  text.split("\n").forEach((line, i) => {
    const s = line.trim();
    if (!s || s.startsWith("#")) return;
    const cut = s.indexOf("=");
    if (cut <= 0) throw new Error(`Extra config, line ${i + 1}: expected key=value, got "${s}".`);
    const key = s.slice(0, cut).trim();
    const raw = s.slice(cut + 1).trim();
    let value = raw;
    try {
      value = JSON.parse(raw);
    } catch {
      /* a plain string */
    }
    config[key] = value;
  });
  return config;
}

export function jobs(main, { signal }) {
  const errors = errorBox();
  const formBox = h("section", { "aria-labelledby": "new-h" }, h("h2", { id: "new-h" }, "New job"), h("p", {}, "Loading models and files…"));
  const table = h("tbody", {});
  const listErrors = errorBox();
  main.append(
    h("h1", {}, "Fine-tuning jobs"),
    errors,
    h(
      "div",
      { class: "split" },
      formBox,
      h(
        "section",
        { "aria-labelledby": "list-h" },
        h("h2", { id: "list-h" }, "Jobs"),
        listErrors,
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { testid: "jobs-table" },
            h("thead", {}, h("tr", {}, ["Job", "Model", "Status", "Progress", "Created"].map((c) => h("th", { scope: "col" }, c)))),
            table,
          ),
        ),
      ),
    ),
  );

  Promise.all([api("/v1/models", { signal }), api("/v1/files?purpose=fine-tune", { signal })])
    .then(([models, files]) => replace(formBox, h("h2", { id: "new-h" }, "New job"), createForm(models.data, files.data, refresh, signal)))
    .catch((e) => e.name !== "AbortError" && showError(errors, e, "Could not load the models and files"));

  const progress = new Map();
  async function refresh() {
    try {
      const page = await api("/v1/fine_tuning/jobs?limit=50", { signal });
      await Promise.all(
        page.data
          .filter((j) => j.status === "running" || j.status === "paused")
          .map(async (j) => progress.set(j.id, await progressOf(j.id, signal).catch(() => progress.get(j.id)))),
      );
      showError(listErrors, null);
      replace(table, page.data.length ? page.data.map((j) => row(j, progress.get(j.id))) : h("tr", {}, h("td", { colspan: 5 }, "No jobs yet.")));
    } catch (e) {
      if (e.name !== "AbortError") showError(listErrors, e, "Could not list the jobs");
    }
  }
  refresh();
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}

function row(j, p) {
  let bar;
  if (j.status === "succeeded") bar = h("progress", { max: 1, value: 1 }, "done");
  else if (p && p.total) bar = [h("progress", { max: p.total, value: p.step }, `${p.step}/${p.total}`), ` ${p.step}/${p.total}`];
  else bar = ACTIVE.includes(j.status) ? "—" : "";
  return h(
    "tr",
    { testid: "job-row", "data-id": j.id, "data-status": j.status },
    h("td", {}, h("a", { href: `#/jobs/${enc(j.id)}` }, j.id), j.user_provided_suffix ? h("small", {}, ` ${j.user_provided_suffix}`) : null, j.trimtab && j.trimtab.kind === "sweep" ? h("small", { class: "badge", testid: "sweep-mark" }, `sweep · ${(j.trimtab.sweep || {}).trials} trials`) : null),
    h("td", {}, j.model),
    h("td", {}, status(j.status)),
    h("td", { testid: "job-progress" }, bar),
    h("td", {}, fmtTime(j.created_at)),
  );
}

function createForm(models, files, refresh, signal) {
  const errors = errorBox();
  const done = h("div", { "aria-live": "polite", testid: "job-created" });
  const model = modelSelect(models, { filter: isBase, testid: "job-model" });
  const fileOptions = (empty) => [empty ? h("option", { value: "" }, empty) : null, files.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`))];
  const training = h("select", { testid: "job-training-file", required: true }, fileOptions(files.length ? null : "No files: upload one on the Data page"));
  const validation = h("select", { testid: "job-validation-file" }, fileOptions("None"));
  const method = h("select", { testid: "job-method" }, [["lora", "LoRA"], ["full", "Full"], ["freeze", "Freeze (train the top layers)"]].map(([v, l]) => h("option", { value: v }, l)));
  const task = h("select", { testid: "job-task" }, [["sft", "Supervised (prompt → completion)"], ["lm", "Language modelling"], ["classify", "Classification"]].map(([v, l]) => h("option", { value: v }, l)));
  const suffix = h("input", { type: "text", maxlength: 64, testid: "job-suffix" });
  const seed = h("input", { type: "number", min: 0, step: 1, testid: "job-seed" });
  const epochs = h("input", { type: "text", value: "auto", testid: "job-epochs", inputmode: "numeric" });
  const batch = h("input", { type: "text", value: "auto", testid: "job-batch-size", inputmode: "numeric" });
  const lr = h("input", { type: "text", value: "auto", testid: "job-lr", inputmode: "decimal" });
  const config = h("textarea", { rows: 3, testid: "job-config", placeholder: "max_steps=200\nprecision=fp32" });
  const submit = h("button", { type: "submit", testid: "job-create" }, "Create job");
  const form = h(
    "form",
    { class: "job-form", testid: "job-form" },
    errors,
    field("Base model", model),
    field("Training file", training),
    field("Validation file (optional)", validation),
    field("Method", method),
    field("Task", task),
    field("Suffix (optional)", suffix, "Part of the fine-tuned model's name."),
    field("Seed (optional)", seed),
    h("fieldset", { class: "hyper" }, h("legend", {}, "Hyperparameters (\"auto\" or a number)"), field("Epochs", epochs), field("Batch size", batch), field("Learning rate multiplier", lr)),
    field("Extra config (key=value per line)", config, "Any trimtab train config key, dotted: optim.weight_decay=0.1"),
    submit,
    done,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(errors, null);
    let body;
    try {
      if (!training.value) throw new Error("Choose a training file (upload one on the Data page).");
      body = {
        model: model.value,
        training_file: training.value,
        method: { type: "supervised", supervised: { hyperparameters: { n_epochs: hyper(epochs, "Epochs", true), batch_size: hyper(batch, "Batch size", true), learning_rate_multiplier: hyper(lr, "Learning rate multiplier", false) } } },
        trimtab: { method: method.value, task: task.value, config: parseConfig(config.value) },
      };
      if (validation.value) body.validation_file = validation.value;
      if (suffix.value.trim()) body.suffix = suffix.value.trim();
      if (seed.value !== "") body.seed = Number(seed.value);
    } catch (err) {
      showError(errors, err);
      return;
    }
    submit.disabled = true;
    try {
      const made = await api("/v1/fine_tuning/jobs", { method: "POST", body, signal });
      done.prepend(h("p", { testid: "job-created-item", "data-id": made.id }, "Created ", h("a", { href: `#/jobs/${enc(made.id)}` }, made.id), ` (${made.status}).`));
      refresh();
    } catch (err) {
      if (err.name !== "AbortError") showError(errors, err, "The job was refused");
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
