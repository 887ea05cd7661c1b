// Playground: one model, a prompt or a chat, streamed with a token view.
import { api } from "../api.js";
import { generate, formatStats, tokenSpan } from "../gen.js";
import { promptInput, samplingControls } from "../params.js";
import { errorBox, field, h, modelSelect, onSubmit, showError } from "../ui.js";

export function playground(main, { query, signal }) {
  const errors = errorBox();
  const modelBox = h("div", { class: "field" }, h("p", {}, "Loading models…"));
  let select = null;
  const input = promptInput();
  const sampling = samplingControls();
  const alternatives = h("input", { type: "number", min: 0, max: 5, step: 1, value: 3, testid: "logprobs" });
  const submit = h("button", { type: "submit", testid: "submit" }, "Submit");
  const stop = h("button", { type: "button", class: "secondary", disabled: true, testid: "stop" }, "Stop");
  const output = h("pre", { class: "output", testid: "output", "aria-live": "polite" });
  const tokens = h("div", { class: "tokens", testid: "token-view", "aria-label": "Generated tokens by probability" });
  const stats = h("p", { class: "stats", testid: "stats" });
  // Chat mode: the conversation sent, by role, and the assistant's reply streaming into it.
  const conversation = h("ol", { class: "conversation", testid: "conversation", hidden: true, "aria-label": "Conversation" });
  let running = null;

  const form = h(
    "form",
    { class: "playground", testid: "playground-form" },
    modelBox,
    input.element,
    h("details", { class: "more" }, h("summary", {}, "Sampling options"), sampling.element, field("Top alternatives per token (0–5)", alternatives)),
    h("div", { class: "row" }, submit, stop, h("small", { class: "hint" }, "Ctrl/⌘+Enter submits")),
  );
  onSubmit(form, run);
  stop.addEventListener("click", () => running && running.abort());

  async function run() {
    if (running || !select) return;
    showError(errors, null);
    let request;
    try {
      const n = Number(alternatives.value);
      if (!(n >= 0 && n <= 5)) throw new Error("Top alternatives must be between 0 and 5.");
      request = { model: select.value, ...input.read(), params: sampling.read(), logprobs: n };
    } catch (e) {
      showError(errors, e);
      return;
    }
    output.textContent = "";
    let target = output;
    const chat = request.mode === "chat";
    output.hidden = chat;
    conversation.hidden = !chat;
    conversation.replaceChildren();
    if (chat) {
      for (const m of request.messages) conversation.append(chatMessage(m.role, m.content));
      const reply = chatMessage("assistant", "");
      conversation.append(reply);
      target = reply.querySelector(".content");
    }
    tokens.replaceChildren();
    stats.textContent = "Generating…";
    running = new AbortController();
    const onLeave = () => running && running.abort();
    signal.addEventListener("abort", onLeave);
    submit.disabled = true;
    stop.disabled = false;
    target.setAttribute("aria-busy", "true");
    try {
      const result = await generate(request, {
        onText: (t) => target.append(t),
        onToken: (t) => tokens.append(tokenSpan(t)),
        signal: running.signal,
      });
      stats.textContent = formatStats(result);
    } catch (e) {
      if (e.name === "AbortError") stats.textContent = "Stopped.";
      else {
        stats.textContent = "";
        showError(errors, e, "Generation failed");
      }
    } finally {
      signal.removeEventListener("abort", onLeave);
      running = null;
      submit.disabled = false;
      stop.disabled = true;
      target.removeAttribute("aria-busy");
    }
  }

  main.append(
    h("h1", {}, "Playground"),
    errors,
    h(
      "div",
      { class: "split" },
      form,
      h(
        "section",
        { class: "result", "aria-labelledby": "out-h" },
        h("h2", { id: "out-h" }, "Output"),
        output,
        conversation,
        stats,
        h("h3", {}, "Tokens"),
        h("p", { class: "hint" }, "Each token is coloured by its probability (red: unlikely, green: likely). Hover or focus one for its alternatives."),
        tokens,
      ),
    ),
  );

  api("/v1/models", { signal })
    .then((list) => {
      select = modelSelect(list.data, { selected: query.get("model"), testid: "model-select" });
      modelBox.replaceWith(field("Model", select));
    })
    .catch((e) => {
      if (e.name !== "AbortError") showError(errors, e, "Could not list the models");
    });
}

/** One message of the conversation: its role, then its text. */
function chatMessage(role, content) {
  return h(
    "li",
    { class: `message message-${role}`, testid: "chat-message", "data-role": role },
    h("span", { class: "role", testid: "chat-role" }, role),
    h("div", { class: "content", testid: "chat-text", "aria-live": role === "assistant" ? "polite" : null }, content),
  );
}
