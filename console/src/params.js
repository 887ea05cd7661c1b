// The sampling controls shared by the Playground and Compare, and the prompt/chat input.
import { field, h } from "./ui.js";

function number(testid, { min, max, step, value }) {
  return h("input", { type: "number", min, max, step, value, testid, inputmode: "decimal" });
}

/** The sampling controls; ``read()`` gives the request's options (or throws a message). */
export function samplingControls() {
  const temperature = number("temperature", { min: 0, max: 2, step: 0.1, value: 1 });
  const topP = number("top-p", { min: 0, max: 1, step: 0.05, value: 1 });
  const maxTokens = number("max-tokens", { min: 1, max: 4096, step: 1, value: 64 });
  const frequency = number("frequency-penalty", { min: -2, max: 2, step: 0.1, value: 0 });
  const presence = number("presence-penalty", { min: -2, max: 2, step: 0.1, value: 0 });
  const stops = [0, 1, 2, 3].map((i) => h("input", { type: "text", testid: `stop-${i}`, placeholder: i ? "" : "e.g. \\n" }));
  const element = h(
    "fieldset",
    { class: "params" },
    h("legend", {}, "Sampling"),
    field("Temperature (0–2)", temperature),
    field("Top p (0–1)", topP),
    field("Maximum tokens", maxTokens),
    field("Frequency penalty (−2–2)", frequency),
    field("Presence penalty (−2–2)", presence),
    h(
      "fieldset",
      { class: "stops" },
      h("legend", {}, "Stop sequences (up to 4; \\n for a newline)"),
      stops.map((s, i) => field(`Stop ${i + 1}`, s)),
    ),
  );
  const checked = (input, name, lo, hi) => {
    const v = Number(input.value);
    if (input.value === "" || Number.isNaN(v) || v < lo || v > hi) throw new Error(`${name} must be between ${lo} and ${hi}.`);
    return v;
  };
  const read = () => {
    const params = {
      temperature: checked(temperature, "Temperature", 0, 2),
      top_p: checked(topP, "Top p", 0, 1),
      max_tokens: Math.round(checked(maxTokens, "Maximum tokens", 1, 1e6)),
      frequency_penalty: checked(frequency, "Frequency penalty", -2, 2),
      presence_penalty: checked(presence, "Presence penalty", -2, 2),
    };
    const stop = stops.map((s) => s.value.replace(/\\n/g, "\n").replace(/\\t/g, "\t")).filter((s) => s !== "");
    if (stop.length) params.stop = stop;
    return params;
  };
  return { element, read };
}

/** Prompt mode (a textarea) or chat mode (a system message and turns). */
export function promptInput() {
  let mode = "prompt";
  const name = `mode-${Math.random().toString(36).slice(2)}`;
  const radio = (value, label) => {
    const input = h("input", { type: "radio", name, value, checked: value === "prompt", testid: `mode-${value}` });
    input.addEventListener("change", () => {
      mode = value;
      promptBox.hidden = mode !== "prompt";
      chatBox.hidden = mode !== "chat";
    });
    return h("label", { class: "inline" }, input, label);
  };
  const prompt = h("textarea", { rows: 5, testid: "prompt", placeholder: "Write a prompt…" });
  const promptBox = h("div", {}, field("Prompt", prompt));
  const system = h("textarea", { rows: 2, testid: "system", placeholder: "You are a helpful assistant." });
  const turns = h("ol", { class: "turns", testid: "messages" });
  const addTurn = (role = "user", content = "") => {
    const select = h("select", {}, ["user", "assistant", "system"].map((r) => h("option", { value: r, selected: r === role }, r)));
    const text = h("textarea", { rows: 2, testid: "message-content" }, content);
    const remove = h("button", { type: "button", class: "secondary small", onclick: () => item.remove() }, "Remove");
    const item = h("li", { class: "turn" }, field("Role", select), field("Message", text), remove);
    turns.append(item);
    return text;
  };
  addTurn();
  const chatBox = h(
    "div",
    { hidden: true },
    field("System message", system),
    turns,
    h("button", { type: "button", class: "secondary", testid: "add-message", onclick: () => addTurn().focus() }, "Add message"),
  );
  const element = h(
    "div",
    { class: "prompt-input" },
    h("fieldset", { class: "modes" }, h("legend", {}, "Mode"), radio("prompt", "Prompt (completions)"), radio("chat", "Chat")),
    promptBox,
    chatBox,
  );
  const read = () => {
    if (mode === "prompt") {
      if (!prompt.value) throw new Error("Write a prompt first.");
      return { mode, prompt: prompt.value };
    }
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    for (const li of turns.children) {
      const [select, text] = li.querySelectorAll("select, textarea");
      if (text.value) messages.push({ role: select.value, content: text.value });
    }
    if (!messages.some((m) => m.role !== "system")) throw new Error("Write a message first.");
    return { mode, messages };
  };
  return { element, read, prompt };
}
