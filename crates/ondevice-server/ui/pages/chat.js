// Chat page: a conversation with a model over the OpenAI-compatible streaming API
// (`POST /v1/chat/completions` with `"stream": true`): model picker, system prompt, temperature,
// token limit, tokens shown as they stream, a stop button that aborts the request, and
// optionally a prompt pack rendered server-side (`prompt_pack`) and a collection to retrieve
// context from (`collection`), whose chunks come back as cited `sources`.

import { clear, el, errorBox, field, replace } from "../lib/dom.js";

export const title = "Chat";
export const scope = "infer";

/** `name=value` lines → an object (blank lines and lines without `=` are skipped). */
function parseVariables(text) {
  const vars = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) vars[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return vars;
}

function sourcesView(sources) {
  return el(
    "details",
    { class: "sources-box", "data-testid": "chat-sources", open: true },
    el("summary", { text: `Sources (${sources.length})` }),
    el(
      "ol",
      { class: "sources" },
      sources.map((s) =>
        el(
          "li",
          { "data-testid": "chat-source", "data-document": s.document, value: String(s.id) },
          el("strong", { text: `[${s.id}] ` }),
          el("span", { class: "mono", text: s.source || s.document }),
          el("span", { class: "muted", text: ` · chunk ${s.chunk} · score ${Number(s.score).toFixed(3)}` }),
          el("div", { class: "hint", text: s.text.length > 400 ? `${s.text.slice(0, 400)}…` : s.text }),
        ),
      ),
    ),
  );
}

export async function render(root, ctx) {
  const errors = el("div");
  const model = el("select", { name: "model", required: true, "data-testid": "chat-model" });
  const system = el("textarea", { name: "system", rows: "2", "data-testid": "chat-system", placeholder: "You are a helpful assistant." });
  const temperature = el("input", { type: "number", name: "temperature", min: "0", max: "2", step: "0.1", value: "0.7", "data-testid": "chat-temperature" });
  const maxTokens = el("input", { type: "number", name: "max_tokens", min: "1", step: "1", value: "512", "data-testid": "chat-max-tokens" });
  const pack = el("select", { name: "prompt_pack", "data-testid": "chat-pack" }, el("option", { value: "", text: "none" }));
  const packVars = el("textarea", { name: "variables", rows: "2", "data-testid": "chat-pack-vars", placeholder: "text=…\nstyle=brief" });
  const collection = el("select", { name: "collection", "data-testid": "chat-collection" }, el("option", { value: "", text: "none" }));
  const output = el("div", { class: "chat-log", role: "log", "aria-live": "polite", "aria-label": "Conversation", "data-testid": "chat-output" });
  const input = el("textarea", { name: "message", rows: "3", required: true, "data-testid": "chat-input", placeholder: "Ask something… (Enter sends, Shift+Enter starts a new line)" });
  const send = el("button", { type: "submit", "data-testid": "chat-send", text: "Send" });
  const stop = el("button", { type: "button", class: "danger", "data-testid": "chat-stop", text: "Stop", disabled: true });
  const reset = el("button", { type: "button", class: "ghost", "data-testid": "chat-clear", text: "New conversation" });
  const status = el("span", { class: "muted", "aria-live": "polite", "data-testid": "chat-status" });

  const tempField = field("Temperature", temperature);
  tempField.node.classList.add("narrow");
  const maxField = field("Max tokens", maxTokens);
  maxField.node.classList.add("narrow");
  const settings = el(
    "details",
    { class: "card", open: true },
    el("summary", { text: "Settings" }),
    el("div", { class: "row" }, field("Model", model).node, tempField.node, maxField.node),
    field("System prompt", system).node,
    el(
      "div",
      { class: "row top" },
      field("Prompt pack", pack, "Rendered by the daemon; its messages come first.").node,
      field("Collection for retrieval", collection, "Chunks retrieved with your message; the answer cites them.").node,
    ),
    field("Pack variables (one name=value a line)", packVars).node,
  );
  const form = el("form", { class: "card", "aria-label": "Message" }, field("Message", input).node, el("div", { class: "row" }, send, stop, reset, status));
  root.append(el("h1", { text: "Chat" }), errors, settings, output, form);

  /** The conversation so far (user and assistant turns; the system prompt is added per request). */
  let history = [];
  let controller = null;

  const [models, packs, collections] = await Promise.allSettled([
    ctx.api("GET", "/v1/models"),
    ctx.api("GET", "/api/v1/prompts"),
    ctx.api("GET", "/api/v1/collections"),
  ]);
  if (models.status === "fulfilled") {
    const ids = (models.value?.data ?? []).map((m) => m.id);
    for (const id of ids) model.append(el("option", { value: id, text: id }));
    if (!ids.length) errors.append(el("p", { class: "needs-scope", "data-testid": "chat-no-models", text: "No model to chat with yet: pull or import one on the Models page." }));
  } else {
    errors.append(errorBox(models.reason));
  }
  if (packs.status === "fulfilled") {
    for (const p of packs.value ?? []) {
      pack.append(el("option", { value: p.name, text: `${p.name} (current${p.current ? ` ${p.current}` : ""})` }));
      for (const v of p.versions ?? []) pack.append(el("option", { value: `${p.name}@${v}`, text: `${p.name}@${v}` }));
    }
  } else {
    errors.append(errorBox(packs.reason));
  }
  if (collections.status === "fulfilled") {
    for (const c of collections.value?.collections ?? []) collection.append(el("option", { value: c.name, text: `${c.name} (${c.documents} documents)` }));
  } else {
    errors.append(errorBox(collections.reason));
  }

  function bubble(role, text) {
    const content = el("p", { class: "content", text });
    const node = el("div", { class: `msg ${role}`, "data-role": role }, el("span", { class: "role", text: role }), content);
    output.append(node);
    output.scrollTop = output.scrollHeight;
    return { node, content };
  }

  function busy(on) {
    send.disabled = on;
    stop.disabled = !on;
    input.disabled = on;
  }

  async function ask() {
    const text = input.value.trim();
    if (!text || controller) return;
    if (!model.value) {
      errors.append(errorBox({ status: null, code: "no_model", message: "choose a model first (none is registered yet: see the Models page)" }));
      return;
    }
    clear(errors);
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
    history.push({ role: "user", content: text });
    messages.push(...history);
    const body = { model: model.value, messages, stream: true, stream_options: { include_usage: true } };
    const t = Number.parseFloat(temperature.value);
    if (!Number.isNaN(t)) body.temperature = t;
    const n = Number.parseInt(maxTokens.value, 10);
    if (n > 0) body.max_tokens = n;
    if (pack.value) body.prompt_pack = { name: pack.value, variables: parseVariables(packVars.value) };
    if (collection.value) body.collection = { name: collection.value };

    for (const old of output.querySelectorAll('[data-testid="chat-answer"]')) old.removeAttribute("data-testid");
    bubble("user", text);
    input.value = "";
    const answer = bubble("assistant", "");
    answer.node.dataset.testid = "chat-answer";
    answer.node.dataset.state = "streaming";
    controller = new AbortController();
    busy(true);
    status.textContent = "generating…";
    let reply = "";
    let finish = null;
    let usage = null;
    try {
      for await (const { data } of ctx.sse("/v1/chat/completions", { method: "POST", body, signal: controller.signal })) {
        if (data === "[DONE]") break;
        if (typeof data !== "object" || data === null) continue;
        if (data.error) throw Object.assign(new Error(data.error.message ?? "generation failed"), { code: data.error.code ?? "stream_error", status: null });
        if (Array.isArray(data.sources) && data.sources.length) answer.node.append(sourcesView(data.sources));
        const choice = data.choices?.[0];
        if (choice?.delta?.content) {
          reply += choice.delta.content;
          answer.content.textContent = reply;
          output.scrollTop = output.scrollHeight;
        }
        if (choice?.finish_reason) finish = choice.finish_reason;
        if (data.usage) usage = data.usage;
      }
      answer.node.dataset.state = "done";
      status.textContent = [finish ? `finished (${finish})` : "finished", usage ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} generated tokens` : null]
        .filter(Boolean)
        .join(" · ");
    } catch (err) {
      if (err?.name === "AbortError") {
        answer.node.dataset.state = "stopped";
        answer.node.append(el("span", { class: "muted", "data-testid": "chat-stopped", text: " (stopped)" }));
        status.textContent = "stopped";
      } else {
        answer.node.dataset.state = "failed";
        errors.append(errorBox(err));
        status.textContent = "failed";
      }
    } finally {
      if (reply) history.push({ role: "assistant", content: reply });
      else if (answer.node.dataset.state === "failed") history.pop();
      controller = null;
      busy(false);
      input.focus();
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ask();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ask();
    }
  });
  stop.addEventListener("click", () => controller?.abort());
  reset.addEventListener("click", () => {
    controller?.abort();
    history = [];
    replace(output);
    status.textContent = "";
    input.focus();
  });

  return () => controller?.abort();
}
