// Building the DOM without innerHTML: every string goes in as text.

/** h("div.card", {onclick: f, title: "x"}, "text", child, [more]) -> element */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG = "http://www.w3.org/2000/svg";

/** The same for SVG elements (attributes only; no event handlers needed). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (k === "class") el.className = v;
    else if (k === "value" || k === "checked") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** A labelled form field: <label><span>text</span>control</label>. */
export function field(label, control, hint) {
  return h("label.field", null, h("span.field-label", null, label), control,
    hint ? h("span.hint", null, hint) : null);
}

export function errorBox(message) {
  return h("div.error", { role: "alert" }, message);
}

// -- formatting ---------------------------------------------------------------------------

const numberFormat = new Intl.NumberFormat();

export function num(n) {
  return n === null || n === undefined ? "—" : numberFormat.format(n);
}

export function usd(n) {
  if (n === null || n === undefined) return "—";
  if (n !== 0 && Math.abs(n) < 0.01) return "$" + n.toPrecision(2);
  return "$" + n.toFixed(2);
}

/** Unix seconds (or an ISO string) -> the browser's local date and time (the year only
 * when it is not this year's; seconds unless ``seconds`` is false). */
export function when(t, seconds = true) {
  if (t === null || t === undefined) return "—";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  return d.toLocaleString(undefined, {
    year: d.getFullYear() === new Date().getFullYear() ? undefined : "numeric",
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    second: seconds ? "2-digit" : undefined,
  });
}

/** The same without seconds, for lists where the minute is enough. */
export function day(t) {
  return when(t, false);
}

/** Seconds -> "30d", "12h", "15m", "45s". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds >= size && seconds % size === 0) return `${seconds / size}${unit}`;
  }
  return `${seconds}s`;
}

export function ms(v) {
  if (v === null || v === undefined) return "—";
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`;
}

/** Copy text to the clipboard; where that is refused, select it for Ctrl+C instead. */
export async function copyText(text, selectable) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (selectable) {
      const range = document.createRange();
      range.selectNodeContents(selectable);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
    }
    return false;
  }
}
