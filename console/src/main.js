// The console: hash routing over the pages, the header's API key control.
import { askKey } from "./api.js";
import { h, replace, route } from "./ui.js";
import { playground } from "./pages/playground.js";
import { compare } from "./pages/compare.js";
import { data } from "./pages/data.js";
import { jobs } from "./pages/jobs.js";
import { job } from "./pages/job.js";
import { runs } from "./pages/runs.js";
import { evaluations } from "./pages/evaluations.js";

const pages = { playground, compare, data, jobs, runs, evaluations };
let cleanup = null;

function render() {
  const { parts, query } = route();
  const main = document.getElementById("main");
  if (cleanup) cleanup();
  cleanup = null;
  const name = parts[0] || "playground";
  let page = pages[name];
  if (name === "jobs" && parts[1]) page = job;
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
