// The console: hash routing over the pages, the header's API key control.
import { api, askKey, enc } from "./api.js";
import { h, replace, route } from "./ui.js";
import { playground } from "./pages/playground.js";
import { compare } from "./pages/compare.js";
import { data } from "./pages/data.js";
import { jobs } from "./pages/jobs.js";
import { job } from "./pages/job.js";
import { sweep } from "./pages/sweep.js";
import { runs } from "./pages/runs.js";
import { evaluations } from "./pages/evaluations.js";

const pages = { playground, compare, data, jobs, runs, evaluations };
let cleanup = null;

// #/jobs/ID: a sweep's page or a job's, by the job's kind (the job page reports a failed read).
// The page mounts once the job is read: until then a note says so, not a blank page (a busy
// server may take seconds), and the page's controls are not there yet.
function jobOrSweep(main, ctx) {
  let stop = null;
  let left = false;
  const loading = h("p", { class: "hint", role: "status", "aria-busy": "true", testid: "page-loading" }, `Loading job ${ctx.parts[1]}…`);
  main.append(loading);
  api(`/v1/fine_tuning/jobs/${enc(ctx.parts[1])}`, { signal: ctx.signal })
    .then((j) => j.trimtab && j.trimtab.kind === "sweep")
    .catch(() => false)
    .then((isSweep) => {
      if (left || ctx.signal.aborted) return;
      loading.remove();
      stop = (isSweep ? sweep : job)(main, ctx);
    });
  return () => {
    left = true;
    if (typeof stop === "function") stop();
  };
}

function render() {
  const { parts, query } = route();
  const main = document.getElementById("main");
  if (cleanup) cleanup();
  cleanup = null;
  const name = parts[0] || "playground";
  let page = pages[name];
  if (name === "jobs" && parts[1]) page = jobOrSweep;
  for (const a of document.querySelectorAll("header nav a")) {
    const current = a.getAttribute("href") === `#/${name}`;
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!page) {
    replace(main, h("h1", {}, "Not found"), h("p", { role: "alert" }, `No page ${location.hash}.`), h("a", { href: "#/playground" }, "Go to the Playground"));
    return;
  }
  const controller = new AbortController();
  replace(main);
  const stop = page(main, { parts, query, signal: controller.signal });
  cleanup = () => {
    controller.abort();
    if (typeof stop === "function") stop();
  };
}

window.addEventListener("hashchange", () => {
  render();
  document.getElementById("main").focus({ preventScroll: true });
});
document.getElementById("key-button").addEventListener("click", async () => {
  if (await askKey()) render();
});
// Nothing logged for calls aborted on leaving a page.
window.addEventListener("unhandledrejection", (e) => {
  if (e.reason && e.reason.name === "AbortError") e.preventDefault();
});
if (!location.hash) history.replaceState(null, "", "#/playground");
render();
