// A job's metrics events, read incrementally (the API lists them newest first).
import { api, enc } from "./api.js";

export class EventLog {
  constructor(jobId) {
    this.jobId = jobId;
    this.events = []; // oldest first
    this.seen = new Set();
  }

  /** Fetch the events not seen yet; returns the new ones (oldest first). */
  async poll(signal) {
    const fresh = [];
    let after = null;
    for (let i = 0; i < 1000; i++) {
      const q = `limit=100${after ? `&after=${enc(after)}` : ""}`;
      const page = await api(`/v1/fine_tuning/jobs/${enc(this.jobId)}/events?${q}`, { signal });
      let hit = false;
      for (const e of page.data) {
        if (this.seen.has(e.id)) {
          hit = true;
          break;
        }
        fresh.push(e);
      }
      if (hit || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    fresh.reverse();
    for (const e of fresh) this.seen.add(e.id);
    this.events.push(...fresh);
    return fresh;
  }

  metrics() {
    const m = { train_loss: new Map(), valid_loss: new Map(), train_acc: new Map(), valid_acc: new Map(), step: 0, total: null };
    for (const e of this.events) {
      if (e.type !== "metrics" || !e.data) continue;
      const d = e.data;
      if (d.step > m.step) m.step = d.step;
      if (d.total_steps) m.total = d.total_steps;
      if (d.train_loss !== undefined && d.train_loss !== null) m.train_loss.set(d.step, d.train_loss);
      if (d.train_mean_token_accuracy !== undefined && d.train_mean_token_accuracy !== null) m.train_acc.set(d.step, d.train_mean_token_accuracy);
      if (d.valid_loss !== undefined && d.valid_loss !== null) m.valid_loss.set(d.step, d.valid_loss);
      if (d.valid_mean_token_accuracy !== undefined && d.valid_mean_token_accuracy !== null) m.valid_acc.set(d.step, d.valid_mean_token_accuracy);
    }
    return m;
  }
}

/** The latest {step, total_steps} of a job, from its newest metrics event. */
export async function progressOf(jobId, signal) {
  const page = await api(`/v1/fine_tuning/jobs/${enc(jobId)}/events?limit=20`, { signal });
  const e = page.data.find((x) => x.type === "metrics" && x.data);
  return e ? { step: e.data.step, total: e.data.total_steps } : null;
}
