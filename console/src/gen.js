// One streamed generation (completions or chat) with its timings and token logprobs.
import { stream } from "./api.js";
import { h } from "./ui.js";

/**
 * Stream a completion. ``request``: {model, mode: "prompt"|"chat", prompt, messages, params,
 * logprobs (0-5 alternatives, null = none)}. Calls onText(text) and onToken(token) as they
 * come; resolves {ttft, total, usage, finish} (seconds).
 */
export async function generate(request, { onText, onToken, signal }) {
  const { model, mode, params, logprobs } = request;
  const body = { model, ...params, stream_options: { include_usage: true } };
  let path;
  if (mode === "chat") {
    path = "/v1/chat/completions";
    body.messages = request.messages;
    if (logprobs !== null && logprobs !== undefined) {
      body.logprobs = true;
      body.top_logprobs = logprobs;
    }
  } else {
    path = "/v1/completions";
    body.prompt = request.prompt;
    if (logprobs !== null && logprobs !== undefined) body.logprobs = logprobs;
  }
  const started = performance.now();
  const result = { ttft: null, total: null, usage: null, finish: null };
  await stream(
    path,
    body,
    (chunk) => {
      if (chunk.usage) result.usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = mode === "chat" ? (choice.delta && choice.delta.content) || "" : choice.text || "";
        if (piece) {
          if (result.ttft === null) result.ttft = (performance.now() - started) / 1000;
          onText(piece);
        }
        if (choice.finish_reason) result.finish = choice.finish_reason;
        if (onToken && choice.logprobs) for (const t of tokensOf(choice.logprobs, mode)) onToken(t);
      }
    },
    signal,
  );
  result.total = (performance.now() - started) / 1000;
  return result;
}

/** {token, logprob, top: [[token, logprob]]} from either API's logprobs shape. */
function tokensOf(logprobs, mode) {
  if (mode === "chat") {
    return (logprobs.content || []).map((t) => ({
      token: t.token,
      logprob: t.logprob,
      top: (t.top_logprobs || []).map((a) => [a.token, a.logprob]),
    }));
  }
  return (logprobs.tokens || []).map((token, i) => ({
    token,
    logprob: (logprobs.token_logprobs || [])[i],
    top: Object.entries(((logprobs.top_logprobs || [])[i]) || {}),
  }));
}

const pct = (lp) => `${(Math.exp(lp) * 100).toFixed(1)}%`;
const show = (t) => JSON.stringify(t);

/** A focusable span for one token, coloured by its probability, its alternatives on hover
 * and on focus. */
export function tokenSpan(t) {
  const p = t.logprob === null || t.logprob === undefined ? null : Math.exp(t.logprob);
  const alternatives = [...t.top].sort((a, b) => b[1] - a[1]).map(([tok, lp]) => `${show(tok)} ${pct(lp)}`);
  const tip = `${show(t.token)}: ${p === null ? "no probability" : pct(t.logprob)}${alternatives.length ? `\nAlternatives: ${alternatives.join(", ")}` : ""}`;
  const hue = p === null ? 0 : Math.round(120 * p);
  return h(
    "span",
    {
      class: "tok",
      tabindex: "0",
      role: "note",
      title: tip,
      "aria-label": tip.replace("\n", "; "),
      "data-tip": tip,
      "data-prob": p === null ? "" : p.toFixed(4),
      testid: "token",
      style: { background: p === null ? "var(--panel)" : `hsl(${hue} 70% 82%)` },
    },
    t.token.replace(/\n/g, "↵\n"),
  );
}

export function formatStats(r) {
  const parts = [];
  if (r.usage) parts.push(`${r.usage.completion_tokens} tokens (${r.usage.prompt_tokens} prompt)`);
  parts.push(`first token ${r.ttft === null ? "—" : `${(r.ttft * 1000).toFixed(0)} ms`}`);
  parts.push(`total ${(r.total * 1000).toFixed(0)} ms`);
  if (r.finish) parts.push(`finish: ${r.finish}`);
  return parts.join(" · ");
}
