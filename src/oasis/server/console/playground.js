// Playground: streaming chat with a model, its settings, per-answer statistics, the
// equivalent code, export. Answers are rendered with the DOM-building Markdown renderer.

import { api, streamChat } from "./api.js";
import { h, clear, field, errorBox, num, ms, copyText } from "./dom.js";
import { render, streaming } from "./markdown.js";
import { snippets } from "./snippets.js";

// The conversation outlives a visit to another page, not a sign-out (forget()).
let state = fresh();

function fresh() {
  return {
    model: null,
    system: "",
    temperature: 0.7,
    maxTokens: 256,
    useSchema: false,
    schema: JSON.stringify({
      type: "object",
      properties: { answer: { type: "string" }, confidence: { type: "number" } },
      required: ["answer", "confidence"],
      additionalProperties: false,
    }, null, 2),
    useTools: false,
    tools: JSON.stringify([{
      type: "function",
      function: {
        name: "get_weather",
        description: "The current weather in a city",
        parameters: {
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
        },
      },
    }], null, 2),
    draft: "",
    messages: [], // {role, content, tool_calls?, model?, stats?}
  };
}

export function forget() {
  state = fresh();
}

export function mount(root, { me }) {
  const controller = { current: null };
  const modelSelect = h("select", { id: "model", name: "model" });
  const system = h("textarea", { id: "system", rows: 3, placeholder: "You are a helpful assistant.",
    value: state.system, oninput: () => { state.system = system.value; } });
  const tempValue = h("output.temp-value", null, String(state.temperature));
  const temperature = h("input", { id: "temperature", type: "range", min: 0, max: 2, step: 0.1,
    value: String(state.temperature),
    oninput: () => {
      state.temperature = Number(temperature.value);
      tempValue.textContent = temperature.value;
    } });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: 1, max: 32768,
    value: String(state.maxTokens),
    oninput: () => { state.maxTokens = Number(maxTokens.value); } });
  const useSchema = h("input", { id: "use-schema", type: "checkbox", checked: state.useSchema,
    onchange: () => { state.useSchema = useSchema.checked; } });
  const schema = h("textarea.mono", { id: "schema", rows: 8, spellcheck: "false",
    value: state.schema, oninput: () => { state.schema = schema.value; } });
  const useTools = h("input", { id: "use-tools", type: "checkbox", checked: state.useTools,
    onchange: () => { state.useTools = useTools.checked; } });
  const tools = h("textarea.mono", { id: "tools", rows: 8, spellcheck: "false",
    value: state.tools, oninput: () => { state.tools = tools.value; } });

  const settings = h("aside.card.settings", null,
    h("h2", null, "Settings"),
    field("Model", modelSelect),
    field("System prompt", system),
    field(h("span", null, "Temperature ", tempValue), temperature),
    field("Max tokens", maxTokens),
    h("details", { open: state.useSchema },
      h("summary", null, "Structured output"),
      h("label.check", null, useSchema, " Answer with JSON following this schema"),
      schema),
    h("details", { open: state.useTools },
      h("summary", null, "Function tools"),
      h("label.check", null, useTools, " Offer these tools (a JSON array)"),
      tools));

  const messages = h("div.messages", { id: "messages", "aria-live": "polite" });
  const prompt = h("textarea", { id: "prompt", rows: 3, value: state.draft,
    placeholder: "Message the model (Enter sends, Shift+Enter is a new line)",
    oninput: () => { state.draft = prompt.value; } });
  const problem = h("div.form-status");
  const send = h("button.primary", { id: "send", type: "submit" }, "Send");
  const stopButton = h("button", { id: "stop", type: "button", disabled: true,
    onclick: () => controller.current?.abort() }, "Stop");
  const codePanel = h("div.code-panel", { id: "code-panel", hidden: true });
  const composer = h("form.composer", { id: "composer" },
    prompt,
    h("div.row", null, send, stopButton,
      h("span.grow"),
      h("button", { type: "button", id: "show-code", onclick: () => toggleCode() }, "Show code"),
      h("button", { type: "button", id: "export", onclick: () => exportJson() }, "Export"),
      h("button", { type: "button", id: "clear", onclick: () => clearChat() }, "Clear")),
    problem);

  root.append(h("section.playground", null, settings,
    h("div.chat", null, messages, composer, codePanel)));

  for (const m of state.messages) messages.append(messageView(m).el);
  const modelsLoaded = loadModels(modelSelect, me)
    .catch((e) => problem.append(errorBox(e.message)));
  modelSelect.addEventListener("change", () => { state.model = modelSelect.value; });

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });

  /** The request's options from the settings; throws Error with a message for a bad field. */
  function options() {
    const out = { temperature: state.temperature, max_tokens: state.maxTokens };
    if (!Number.isInteger(state.maxTokens) || state.maxTokens < 1) {
      throw new Error("Max tokens must be a whole number of at least 1.");
    }
    if (state.useSchema) {
      let parsed;
      try {
        parsed = JSON.parse(state.schema);
      } catch (e) {
        throw new Error(`The JSON schema is not valid JSON: ${e.message}`);
      }
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new Error("The JSON schema must be a JSON object.");
      }
      out.response_format = {
        type: "json_schema", json_schema: { name: "answer", schema: parsed, strict: true },
      };
    }
    if (state.useTools) {
      let parsed;
      try {
        parsed = JSON.parse(state.tools);
      } catch (e) {
        throw new Error(`The tools are not valid JSON: ${e.message}`);
      }
      if (!Array.isArray(parsed) || !parsed.length) {
        throw new Error("The tools must be a non-empty JSON array of function tools.");
      }
      out.tools = parsed;
    }
    return out;
  }

  function requestMessages(extra) {
    const out = [];
    if (state.system.trim()) out.push({ role: "system", content: state.system });
    for (const m of state.messages) {
      // tool calls are shown, not replayed: the playground does not answer them
      out.push({ role: m.role, content: m.content ?? "" });
    }
    if (extra) out.push({ role: "user", content: extra });
    return out;
  }

  /** The settings' options, or null with the problem shown (a schema or tools that are not
   * JSON, say). */
  function checkedOptions() {
    try {
      return options();
    } catch (e) {
      problem.append(errorBox(e.message));
      return null;
    }
  }

  async function submit() {
    await modelsLoaded; // a question sent right away waits for the model list
    clear(problem);
    const text = prompt.value.trim();
    if (!text || controller.current) return;
    const opts = checkedOptions();
    if (!opts) return;
    const model = modelSelect.value;
    if (!model) {
      problem.append(errorBox("No model to talk to."));
      return;
    }
    const body = {
      model, messages: requestMessages(text), stream: true,
      stream_options: { include_usage: true }, ...opts,
    };
    const user = { role: "user", content: text };
    state.messages.push(user);
    messages.append(messageView(user).el);
    prompt.value = state.draft = "";
    const answer = { role: "assistant", content: "", model, json: Boolean(opts.response_format) };
    const view = messageView(answer);
    view.el.dataset.state = "streaming";
    messages.append(view.el);
    view.el.scrollIntoView({ block: "end" });

    const abort = new AbortController();
    controller.current = abort;
    send.disabled = true;
    stopButton.disabled = false;
    const started = performance.now();
    let first = null;
    let usage = null;
    let finish = null;
    const calls = [];
    try {
      await streamChat(body, {
        signal: abort.signal,
        onChunks(chunks) {
          for (const chunk of chunks) {
            if (chunk.usage) usage = chunk.usage;
            for (const choice of chunk.choices || []) {
              const delta = choice.delta || {};
              if ((delta.content || delta.tool_calls) && first === null) {
                first = performance.now();
              }
              if (delta.content) answer.content += delta.content;
              for (const call of delta.tool_calls || []) {
                const slot = calls[call.index ?? calls.length] ??= {
                  id: "", type: "function", function: { name: "", arguments: "" },
                };
                if (call.id) slot.id = call.id;
                if (call.function?.name) slot.function.name += call.function.name;
                if (call.function?.arguments) slot.function.arguments += call.function.arguments;
              }
              if (choice.finish_reason) finish = choice.finish_reason;
            }
          }
          if (calls.length) answer.tool_calls = calls.filter(Boolean);
          view.later();
        },
      });
      view.el.dataset.state = "done";
    } catch (e) {
      if (e.name === "AbortError") {
        finish = "stopped";
        view.el.dataset.state = "stopped";
      } else {
        view.el.dataset.state = "error";
        view.el.append(errorBox(e.message));
        if (!answer.content && !calls.length) {
          // nothing came back: take the question back so it can be sent again
          state.messages.pop();
          prompt.value = state.draft = text;
        }
      }
    } finally {
      controller.current = null;
      send.disabled = false;
      stopButton.disabled = true;
    }
    const end = performance.now();
    answer.stats = {
      prompt_tokens: usage?.prompt_tokens ?? null,
      completion_tokens: usage?.completion_tokens ?? null,
      ttft_ms: first === null ? null : first - started,
      tokens_per_s: usage && first !== null && end > first
        ? usage.completion_tokens / ((end - first) / 1000) : null,
      finish_reason: finish,
    };
    if (view.el.dataset.state !== "error" || answer.content) state.messages.push(answer);
    view.update(true);
  }

  function clearChat() {
    controller.current?.abort();
    state.messages = [];
    clear(messages);
    clear(problem);
  }

  function exportJson() {
    let opts = {};
    try {
      opts = options();
    } catch {
      // export the conversation even when a settings field is half-written
    }
    const data = {
      exported_at: new Date().toISOString(),
      model: modelSelect.value,
      system: state.system || null,
      settings: opts,
      messages: state.messages.map(({ json, ...m }) => m),
    };
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: `oasis-chat-${Date.now()}.json` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function toggleCode() {
    if (!codePanel.hidden) {
      codePanel.hidden = true;
      return;
    }
    clear(problem);
    const opts = checkedOptions();
    if (!opts) return;
    const request = {
      model: modelSelect.value || "MODEL",
      messages: requestMessages(prompt.value.trim() || "Hello!"),
      ...opts,
    };
    const code = snippets(`${location.origin}/v1`, request);
    clear(codePanel);
    const pre = h("pre.code", { id: "code" });
    const copy = h("button", { type: "button" }, "Copy");
    const tabs = h("div.tabs", { role: "tablist" });
    const pick = (name) => {
      pre.textContent = code[name];
      for (const b of tabs.children) b.setAttribute("aria-selected", String(b.value === name));
    };
    for (const name of Object.keys(code)) {
      tabs.append(h("button.tab", { type: "button", role: "tab", value: name,
        onclick: () => pick(name) }, name));
    }
    copy.addEventListener("click", async () => {
      copy.textContent = (await copyText(pre.textContent, pre)) ? "Copied" : "Press Ctrl+C";
      setTimeout(() => { copy.textContent = "Copy"; }, 1500);
    });
    codePanel.append(h("div.row", null, tabs, h("span.grow"), copy), pre,
      h("p.hint", null, "The key is read from the OPENAI_API_KEY environment variable."));
    pick("curl");
    codePanel.hidden = false;
  }

  return () => controller.current?.abort();
}

async function loadModels(select, me) {
  const list = await api("/v1/models");
  let ids = list.data.map((m) => m.id);
  const allowed = me.key?.models;
  if (allowed) {
    const mine = ids.filter((id) => allowed.includes(id));
    ids = mine.length ? mine : allowed;
  }
  clear(select);
  for (const id of ids) select.append(h("option", { value: id }, id));
  if (state.model && ids.includes(state.model)) select.value = state.model;
  state.model = select.value || null;
}

/** One message in the list; update() repaints it from the message object, later() at the
 * next frame (at most once a frame, while an answer streams in), update(true) when done. */
function messageView(m) {
  const content = h("div.content");
  const calls = h("div.tool-calls");
  const stats = h("div.stats");
  const el = h(`div.msg.${m.role}`, null,
    h("div.role", null, m.role === "user" ? "You" : m.model || "assistant"),
    content, calls, stats);
  let frame = 0;
  let live = null; // while the answer streams: its Markdown so far, finished blocks kept
  const later = () => {
    frame ||= requestAnimationFrame(() => {
      frame = 0;
      update();
    });
  };
  const update = (final = false) => {
    cancelAnimationFrame(frame);
    frame = 0;
    if (m.role === "user") {
      content.textContent = m.content;
      return;
    }
    if (m.json) {
      let text = m.content;
      if (final) {
        try {
          text = JSON.stringify(JSON.parse(m.content), null, 2);
        } catch {
          // not (yet) JSON: shown as it came
        }
      }
      content.replaceChildren(h("pre.json", null, text));
    } else if (final) {
      live = null;
      content.replaceChildren(render(m.content));
    } else {
      if (!live) live = streaming(clear(content));
      live(m.content);
    }
    clear(calls);
    for (const call of m.tool_calls || []) {
      let args = call.function.arguments;
      try {
        args = JSON.parse(args);
      } catch {
        // partial or not JSON: shown as text
      }
      calls.append(h("div.tool-call", null, h("div.tool-name", null, `tool call: ${call.function.name}`),
        h("pre", null, JSON.stringify({ id: call.id, name: call.function.name, arguments: args },
          null, 2))));
    }
    if (m.stats) {
      const st = m.stats;
      stats.replaceChildren(
        h("span", { title: "prompt tokens" }, `prompt ${num(st.prompt_tokens)}`),
        h("span", { title: "completion tokens" }, `completion ${num(st.completion_tokens)}`),
        h("span", { title: "time to first token" }, `TTFT ${ms(st.ttft_ms)}`),
        h("span", null, st.tokens_per_s === null ? "— tok/s" : `${st.tokens_per_s.toFixed(1)} tok/s`),
        h("span.finish", null, `finish: ${st.finish_reason ?? "—"}`));
    }
  };
  update(true);
  return { el, update, later };
}
