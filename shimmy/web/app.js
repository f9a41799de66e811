// shimmy's chat page: talks to this server's OpenAI-compatible routes.
//
// Safety rule for this file: model and server text reaches the page only through text
// nodes and textContent. Nothing is ever parsed as HTML, so a model answer that contains
// <script> or <img onerror> is shown as the characters it is.

const $ = (id) => document.getElementById(id);

const ui = {
  model: $("model"),
  status: $("server-status"),
  newChat: $("new-chat"),
  toggleSettings: $("toggle-settings"),
  settings: $("settings"),
  system: $("system"),
  temperature: $("temperature"),
  temperatureValue: $("temperature-value"),
  maxTokens: $("max-tokens"),
  apiKey: $("api-key"),
  messages: $("messages"),
  emptyHint: $("empty-hint"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
};

const state = {
  history: [], // {role, content} turns sent with every request
  controller: null, // the AbortController of the generation in progress
  lastModel: null,
  conversation: 0, // counts New chat presses: a turn of an older conversation is dropped
};

class ServerError extends Error {}

init();

function init() {
  restoreSettings();
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submitPrompt();
  });
  ui.prompt.addEventListener("keydown", onPromptKey);
  ui.stop.addEventListener("click", stopGeneration);
  ui.newChat.addEventListener("click", newChat);
  ui.toggleSettings.addEventListener("click", toggleSettings);
  ui.model.addEventListener("change", onModelChange);
  ui.temperature.addEventListener("input", showTemperature);
  for (const input of [ui.system, ui.temperature, ui.maxTokens, ui.apiKey]) {
    input.addEventListener("change", saveSettings);
  }
  ui.apiKey.addEventListener("change", loadModels); // a new key may open the model list
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) stopGeneration();
  });
  loadModels();
}

// --- settings ---------------------------------------------------------------------------

function restoreSettings() {
  const saved = readJson(localStorage, "shimmy.settings");
  if (saved) {
    ui.system.value = saved.system ?? "";
    ui.temperature.value = saved.temperature ?? ui.temperature.value;
    ui.maxTokens.value = saved.maxTokens ?? ui.maxTokens.value;
  }
  ui.apiKey.value = sessionStorage.getItem("shimmy.apiKey") ?? "";
  showTemperature();
}

function saveSettings() {
  const settings = {
    system: ui.system.value,
    temperature: ui.temperature.value,
    maxTokens: ui.maxTokens.value,
  };
  localStorage.setItem("shimmy.settings", JSON.stringify(settings));
  sessionStorage.setItem("shimmy.apiKey", ui.apiKey.value);
}

function readJson(storage, key) {
  try {
    return JSON.parse(storage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}

function showTemperature() {
  ui.temperatureValue.textContent = Number(ui.temperature.value).toFixed(2);
}

function toggleSettings() {
  const open = ui.settings.hidden;
  ui.settings.hidden = !open;
  ui.toggleSettings.setAttribute("aria-expanded", String(open));
}

// --- models -----------------------------------------------------------------------------

async function loadModels() {
  setStatus("Connecting…");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (!response.ok) throw new ServerError(await describeResponse(response));
    const body = await response.json();
    fillModelPicker(body.data.map((model) => model.id));
    const count = body.data.length;
    setStatus(count ? `${count} model${count === 1 ? "" : "s"} available` : "", false);
    if (!count) {
      setStatus("The server has no models. Start it with --model-path FILE or " +
        "--model-dirs DIR (run 'shimmy discover' to see where it looks).", true);
    }
  } catch (error) {
    setStatus(`Cannot list the models: ${describeFailure(error)}`, true);
  }
}

function fillModelPicker(ids) {
  const previous = ui.model.value;
  ui.model.replaceChildren(...ids.map((id) => new Option(id, id)));
  if (ids.includes(previous)) ui.model.value = previous;
  state.lastModel = ui.model.value || null;
}

function onModelChange() {
  if (state.history.length && ui.model.value !== state.lastModel) {
    addNote(`Switched to ${ui.model.value}; the conversation so far goes with it.`);
  }
  state.lastModel = ui.model.value;
}

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

// --- sending ----------------------------------------------------------------------------

function onPromptKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submitPrompt();
  }
}

function submitPrompt() {
  const text = ui.prompt.value.trim();
  if (!text || state.controller) return;
  const problem = settingsProblem();
  if (problem) {
    addNote(problem, true);
    return;
  }
  ui.prompt.value = "";
  chat(text);
}

function settingsProblem() {
  if (!ui.model.value) {
    return "There is no model to talk to. Check that the server is running and has models, " +
      "then reload the page.";
  }
  const maxTokens = ui.maxTokens.value.trim();
  if (maxTokens && !(Number.isInteger(Number(maxTokens)) && Number(maxTokens) >= 1)) {
    return "Max tokens must be a whole number of 1 or more, or empty for no limit (Settings).";
  }
  return null;
}

function requestBody(model) {
  const system = ui.system.value.trim();
  const messages = system ? [{ role: "system", content: system }] : [];
  const body = {
    model,
    messages: messages.concat(state.history),
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number(ui.temperature.value),
  };
  const maxTokens = ui.maxTokens.value.trim();
  if (maxTokens) body.max_tokens = Number(maxTokens); // empty: up to the context's end
  return body;
}

async function chat(text) {
  const model = ui.model.value;
  const userView = addMessage("user", "You");
  renderInto(userView.body, text, false);
  state.history.push({ role: "user", content: text });
  const view = addMessage("assistant", model);
  const run = { text: "", timing: newTiming(), usage: null, finish: null };
  const controller = new AbortController();
  const conversation = state.conversation;
  const stillCurrent = () => conversation === state.conversation;
  setBusy(controller);
  const stopWatching = watchLoading(model, view);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(requestBody(model)),
      signal: controller.signal,
    });
    stopWatching(); // the answer has begun: the model is in
    if (!response.ok) throw new ServerError(await describeResponse(response));
    await readEvents(response, (chunk) => onChunk(chunk, run, view));
    if (stillCurrent()) finishTurn(run, view, "done");
  } catch (error) {
    if (!stillCurrent()) return;
    if (error.name === "AbortError") {
      finishTurn(run, view, "stopped");
    } else {
      failTurn(run, view, userView, text, describeFailure(error));
    }
  } finally {
    stopWatching();
    if (state.controller === controller) setBusy(null);
  }
}

// While the request waits for its model to load, show how far the load is
// (GET /api/health?model=NAME answers "loading" with the share of the weights read).
function watchLoading(model, view) {
  let watching = true;
  const poll = async () => {
    try {
      const url = `/api/health?model=${encodeURIComponent(model)}`;
      const body = await (await fetch(url, { headers: authHeaders() })).json();
      if (watching && body.state === "loading") {
        view.stats.textContent = `loading ${body.model}… ${Math.round(body.progress * 100)}%`;
      }
    } catch {
      // the chat request itself reports what went wrong
    }
  };
  const timer = setInterval(poll, 250);
  return () => {
    watching = false;
    clearInterval(timer);
  };
}

function authHeaders() {
  const key = ui.apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setBusy(controller) {
  state.controller = controller;
  ui.send.hidden = Boolean(controller);
  ui.stop.hidden = !controller;
  ui.send.disabled = Boolean(controller);
  if (!controller) ui.prompt.focus();
}

function stopGeneration() {
  // Aborting the fetch closes the connection; the server sees the disconnect and frees
  // the slot before its next decode step.
  state.controller?.abort();
}

function newChat() {
  stopGeneration();
  state.conversation += 1;
  state.history = [];
  ui.messages.replaceChildren(ui.emptyHint);
  ui.emptyHint.hidden = false;
  ui.prompt.focus();
}

// --- the stream -------------------------------------------------------------------------

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = eventData(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") return;
      if (data) onEvent(JSON.parse(data));
    }
  }
  throw new ServerError("the answer stopped before it was complete " +
    "(the server may have stopped or restarted).");
}

function eventData(event) {
  return event.split("\n")
    .filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).replace(/^ /, ""))
    .join("\n");
}

function onChunk(chunk, run, view) {
  if (chunk.error) throw new ServerError(errorMessage(chunk.error));
  if (chunk.usage) run.usage = chunk.usage;
  const choice = chunk.choices?.[0];
  if (!choice) return;
  if (choice.finish_reason) run.finish = choice.finish_reason;
  const piece = choice.delta?.content;
  if (!piece) return;
  if (run.timing.first === null) run.timing.first = performance.now();
  run.timing.pieces += 1;
  run.text += piece;
  scheduleRender(view, run);
}

function scheduleRender(view, run) {
  if (view.pending) return;
  view.pending = requestAnimationFrame(() => {
    view.pending = 0;
    renderInto(view.body, run.text, true);
    view.stats.textContent = liveStats(run.timing);
    keepScrolledToEnd();
  });
}

function finishTurn(run, view, how) {
  cancelAnimationFrame(view.pending);
  view.pending = 0;
  run.timing.end = performance.now();
  renderInto(view.body, run.text, true);
  if (!run.text && how === "done") view.body.replaceChildren(emptyAnswerNote());
  state.history.push({ role: "assistant", content: run.text });
  view.root.classList.toggle("stopped", how === "stopped");
  view.stats.textContent = finalStats(run, how);
  keepScrolledToEnd();
}

function failTurn(run, view, userView, text, message) {
  cancelAnimationFrame(view.pending);
  state.history.pop(); // the user's turn got no answer: leave it out of the next request
  userView.root.classList.add("unsent");
  if (!ui.prompt.value) ui.prompt.value = text; // ready to send again
  view.root.classList.add("failed");
  renderInto(view.body, run.text, true);
  const error = document.createElement("p");
  error.className = "error";
  error.setAttribute("role", "alert");
  error.textContent = message;
  view.body.append(error);
  view.stats.textContent = "";
  keepScrolledToEnd();
}

function emptyAnswerNote() {
  const note = document.createElement("p");
  note.className = "muted";
  note.textContent = "(the model ended its answer without writing anything)";
  return note;
}

// --- timing -----------------------------------------------------------------------------

function newTiming() {
  return { start: performance.now(), first: null, end: null, pieces: 0 };
}

function liveStats(timing) {
  if (timing.first === null) return "waiting for the first token…";
  const parts = [`first token ${formatMs(timing.first - timing.start)}`];
  const rate = tokensPerSecond(timing.pieces, timing.first, performance.now());
  if (rate !== null) parts.push(`${rate} tok/s`);
  return parts.join(" · ");
}

function finalStats(run, how) {
  const { timing, usage } = run;
  const parts = [];
  if (how === "stopped") parts.push("Stopped");
  // the usage chunk has the exact count; without it (stopped) each piece is about a token
  const tokens = usage ? usage.completion_tokens : timing.pieces;
  parts.push(`${usage ? "" : "≈"}${tokens} token${tokens === 1 ? "" : "s"}`);
  if (timing.first !== null) {
    const rate = tokensPerSecond(tokens, timing.first, timing.end);
    if (rate !== null) parts.push(`${rate} tok/s`);
    parts.push(`first token ${formatMs(timing.first - timing.start)}`);
  }
  if (run.finish === "length") parts.push("reached max tokens");
  return parts.join(" · ");
}

function tokensPerSecond(tokens, first, end) {
  // the first token's time is the wait for the prompt; the rate counts the ones after it
  const seconds = (end - first) / 1000;
  if (tokens < 2 || seconds <= 0) return null;
  return ((tokens - 1) / seconds).toFixed(1);
}

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

// --- errors in words --------------------------------------------------------------------

async function describeResponse(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = errorMessage(body.error);
  } catch {
    detail = "";
  }
  detail ||= `HTTP ${response.status} ${response.statusText}`.trim();
  if (response.status === 401) {
    return `The server needs an API key: enter it under Settings (${detail}).`;
  }
  if (response.status === 503) return `The server is busy; try again shortly (${detail}).`;
  if (response.status >= 500) return `The server failed to answer: ${detail}`;
  const hint = /context/i.test(detail)
    ? " Lower Max tokens (Settings) or start a New chat to shorten the conversation."
    : "";
  return `The server refused the request: ${detail}${hint}`;
}

function errorMessage(error) {
  if (!error) return "";
  if (typeof error === "string") return error;
  return error.message || error.details || error.code || JSON.stringify(error);
}

function describeFailure(error) {
  if (error instanceof ServerError) return error.message;
  if (error instanceof TypeError) {
    return `Cannot reach the shimmy server at ${location.host}. Is it still running? ` +
      "Start it with 'shimmy serve', then try again.";
  }
  if (error instanceof SyntaxError) {
    return "The server sent something that is not JSON; is this address really shimmy?";
  }
  return String(error.message || error);
}

// --- the conversation's view ------------------------------------------------------------

function addMessage(role, label) {
  ui.emptyHint.hidden = true;
  const root = document.createElement("article");
  root.className = `message ${role}`;
  const header = document.createElement("header");
  header.className = "who";
  header.textContent = label;
  const body = document.createElement("div");
  body.className = "body";
  const stats = document.createElement("footer");
  stats.className = "stats";
  root.append(header, body, stats);
  ui.messages.append(root);
  keepScrolledToEnd(true);
  return { root, body, stats, pending: 0 };
}

function addNote(text, isError = false) {
  ui.emptyHint.hidden = true;
  const note = document.createElement("p");
  note.className = isError ? "note error" : "note";
  if (isError) note.setAttribute("role", "alert");
  note.textContent = text;
  ui.messages.append(note);
  keepScrolledToEnd(true);
}

function keepScrolledToEnd(force = false) {
  const box = ui.messages;
  const nearEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  if (force || nearEnd) box.scrollTop = box.scrollHeight;
}

function renderInto(container, text, asMarkdown) {
  if (!asMarkdown) {
    const paragraph = document.createElement("p");
    paragraph.className = "plain";
    paragraph.textContent = text;
    container.replaceChildren(paragraph);
    return;
  }
  container.replaceChildren(renderMarkdown(text));
}

// --- Markdown, built as DOM nodes -------------------------------------------------------
// Blocks: fenced code, headings, lists, quotes, rules, paragraphs. Inline: code, bold,
// italics, links (http and https only). Anything else stays literal text.

const BLOCK_RULES = [
  { test: /^\s*(`{3,}|~{3,})/, build: codeBlock },
  { test: /^#{1,6}\s/, build: heading },
  { test: /^\s*(\*\s*){3,}$|^\s*(-\s*){3,}$|^\s*(_\s*){3,}$/, build: rule },
  { test: /^\s*>/, build: quote },
  { test: /^\s*[-*+]\s+/, build: (lines, at) => list(lines, at, false) },
  { test: /^\s*\d{1,9}[.)]\s+/, build: (lines, at) => list(lines, at, true) },
];

function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = text.split("\n");
  let at = 0;
  while (at < lines.length) {
    if (!lines[at].trim()) {
      at += 1;
      continue;
    }
    const rule = BLOCK_RULES.find((candidate) => candidate.test.test(lines[at]));
    const [node, next] = (rule ? rule.build : paragraph)(lines, at);
    fragment.append(node);
    at = next;
  }
  return fragment;
}

function codeBlock(lines, at) {
  const opening = lines[at].match(/^\s*(`{3,}|~{3,})\s*([^`\s]*)/);
  const fence = opening[1];
  const body = [];
  let next = at + 1;
  while (next < lines.length && !lines[next].trim().startsWith(fence)) {
    body.push(lines[next]);
    next += 1;
  }
  const figure = document.createElement("figure");
  figure.className = "code";
  const caption = document.createElement("figcaption");
  const language = document.createElement("span");
  language.textContent = opening[2] || "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  const code = document.createElement("code");
  code.textContent = body.join("\n");
  copy.addEventListener("click", () => copyText(code.textContent, copy));
  caption.append(language, copy);
  const pre = document.createElement("pre");
  pre.append(code);
  figure.append(caption, pre);
  return [figure, next + 1]; // an unclosed fence (still streaming) runs to the end
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

function heading(lines, at) {
  const [, hashes, text] = lines[at].match(/^(#{1,6})\s+(.*?)\s*#*\s*$/);
  const node = document.createElement(`h${Math.min(hashes.length + 2, 6)}`);
  node.append(inline(text));
  return [node, at + 1];
}

function rule(lines, at) {
  return [document.createElement("hr"), at + 1];
}

function quote(lines, at) {
  const quoted = [];
  let next = at;
  while (next < lines.length && /^\s*>/.test(lines[next])) {
    quoted.push(lines[next].replace(/^\s*> ?/, ""));
    next += 1;
  }
  const node = document.createElement("blockquote");
  node.append(renderMarkdown(quoted.join("\n")));
  return [node, next];
}

function list(lines, at, ordered) {
  const marker = ordered ? /^\s*(\d{1,9})[.)]\s+/ : /^\s*[-*+]\s+/;
  const node = document.createElement(ordered ? "ol" : "ul");
  const first = lines[at].match(marker);
  if (ordered && first[1] !== "1") node.start = Number(first[1]);
  let next = at;
  let item = null;
  while (next < lines.length) {
    const line = lines[next];
    if (marker.test(line)) {
      item = document.createElement("li");
      item.append(inline(line.replace(marker, "")));
      node.append(item);
    } else if (line.trim() && /^\s+/.test(line) && item) {
      item.append(document.createElement("br"), inline(line.trim()));
    } else {
      break;
    }
    next += 1;
  }
  return [node, next];
}

function paragraph(lines, at) {
  const node = document.createElement("p");
  let next = at;
  while (next < lines.length && lines[next].trim() &&
         (next === at || !BLOCK_RULES.some((rule) => rule.test.test(lines[next])))) {
    if (next > at) node.append(document.createElement("br"));
    node.append(inline(lines[next]));
    next += 1;
  }
  return [node, next];
}

const INLINE = new RegExp([
  /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source, // 1-2: code
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 3: bold
  /__(?=\S)([\s\S]*?\S)__/.source, // 4: bold
  /\*(?=[^\s*])([^*]*?[^\s*])\*/.source, // 5: italics
  /(?<![\w])_(?=[^\s_])([^_]*?[^\s_])_(?![\w])/.source, // 6: italics
  /\[([^\]\n]+)\]\(\s*([^)\s]+)\s*\)/.source, // 7-8: link
].join("|"), "g");

function inline(text) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    fragment.append(document.createTextNode(text.slice(last, match.index)));
    fragment.append(inlineNode(match));
    last = match.index + match[0].length;
  }
  fragment.append(document.createTextNode(text.slice(last)));
  return fragment;
}

function inlineNode(match) {
  const [whole, , code, bold, bold2, italic, italic2, label, href] = match;
  if (code !== undefined) {
    const node = document.createElement("code");
    node.textContent = code;
    return node;
  }
  if (bold !== undefined || bold2 !== undefined) {
    return wrap("strong", bold ?? bold2);
  }
  if (italic !== undefined || italic2 !== undefined) {
    return wrap("em", italic ?? italic2);
  }
  const url = safeUrl(href);
  if (!url) return document.createTextNode(whole);
  const link = document.createElement("a");
  link.href = url;
  link.target = "_blank";
  link.rel = "noopener noreferrer";
  link.textContent = label;
  return link;
}

function wrap(tag, text) {
  const node = document.createElement(tag);
  node.append(inline(text));
  return node;
}

function safeUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}
