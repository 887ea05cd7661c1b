// Small DOM helpers shared by the pages.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "testid") el.dataset.testid = v;
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let uid = 0;
export function id(prefix = "f") {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** A labelled field: the label tied to its control. */
export function field(label, control, hint) {
  if (!control.id) control.id = id();
  const parts = [h("label", { for: control.id }, label), control];
  if (hint) {
    const hid = id("hint");
    control.setAttribute("aria-describedby", hid);
    parts.push(h("small", { id: hid, class: "hint" }, hint));
  }
  return h("div", { class: "field" }, parts);
}

/** An error box (role=alert) in ``box``, or nothing when error is null. */
// A form that runs `run` on submit and on Ctrl/Cmd+Enter from any of its fields.
export function onSubmit(form, run) {
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    run();
  });
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      run();
    }
  });
}

export function showError(box, error, prefix) {
  if (!error) {
    box.replaceChildren();
    return;
  }
  const message = error.message || String(error);
  replace(box, h("div", { role: "alert", class: "error", testid: "error" }, prefix ? `${prefix}: ${message}` : message));
}

export function errorBox() {
  return h("div", { class: "error-box" });
}

export function status(s) {
  return h("span", { class: `badge badge-${s}`, testid: "status" }, s);
}

export function fmtTime(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleString();
}

export function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  if (typeof x !== "number") return String(x);
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}

export function link(href, text, attrs = {}) {
  return h("a", { href, ...attrs }, text);
}

export function modelSelect(models, { filter = () => true, selected, testid, allowEmpty } = {}) {
  const select = h("select", { testid });
  if (allowEmpty) select.append(h("option", { value: "" }, allowEmpty));
  const groups = [
    ["Base models", (m) => isBase(m)],
    ["Fine-tuned", (m) => !isBase(m) && !isCheckpoint(m)],
    ["Checkpoints", (m) => isCheckpoint(m)],
  ];
  for (const [label, test] of groups) {
    const items = models.filter((m) => filter(m) && test(m));
    if (!items.length) continue;
    select.append(h("optgroup", { label }, items.map((m) => h("option", { value: m.id }, m.id))));
  }
  if (selected && [...select.options].some((o) => o.value === selected)) select.value = selected;
  return select;
}

export function isCheckpoint(m) {
  return /:ckpt-step-\d+$/.test(m.id);
}

export function isBase(m) {
  return !m.fine_tuned && !m.parent;
}

/** Parse a hash route: "#/jobs/ftjob-1?x=y" → {parts: ["jobs", "ftjob-1"], query}. */
export function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, qs] = hash.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(qs || "") };
}
