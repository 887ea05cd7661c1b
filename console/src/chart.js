// Line charts over uPlot: steps on x, one or two y scales; gaps spanned.
import uPlot from "uplot";
import { h } from "./ui.js";

export const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];

/** A chart in ``box``: ``series`` = [{label, color, scale: "loss"|"acc", dash}]. */
export function lineChart(box, { series, title, ylabel = "loss", y2label }) {
  const holder = h("div", { class: "chart", testid: "chart", role: "img", "aria-label": title, "data-points": "0" });
  box.append(holder);
  const width = () => Math.max(260, holder.clientWidth || box.clientWidth || 600);
  const axes = [
    { label: "step", stroke: "#444", grid: { stroke: "#e5e7eb" } },
    { label: ylabel, scale: "loss", stroke: "#444", grid: { stroke: "#e5e7eb" } },
  ];
  if (y2label) axes.push({ label: y2label, scale: "acc", side: 1, stroke: "#444", grid: { show: false } });
  const plot = new uPlot(
    {
      width: width(),
      height: 280,
      title,
      scales: { x: { time: false }, acc: { range: [0, 1] } },
      axes,
      series: [{ label: "step" }, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, scale: s.scale || "loss", dash: s.dash, spanGaps: true, points: { show: false } }))],
    },
    [[], ...series.map(() => [])],
    holder,
  );
  const onResize = () => plot.setSize({ width: width(), height: 280 });
  window.addEventListener("resize", onResize);
  return {
    holder,
    set(xs, ys) {
      plot.setData([xs, ...ys]);
      holder.dataset.points = String(xs.length);
    },
    destroy() {
      window.removeEventListener("resize", onResize);
      plot.destroy();
    },
  };
}

/** Exponential moving average (0 = none); nulls stay nulls and do not move the average. */
export function ema(values, alpha) {
  if (!alpha) return values;
  let last = null;
  return values.map((v) => {
    if (v === null || v === undefined) return null;
    last = last === null ? v : alpha * last + (1 - alpha) * v;
    return last;
  });
}

/** Align several {step: value} maps on their union of steps. */
export function align(maps) {
  const steps = [...new Set(maps.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
  return [steps, maps.map((m) => steps.map((s) => (m.has(s) ? m.get(s) : null)))];
}
