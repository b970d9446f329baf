// A small Markdown renderer that builds DOM nodes: paragraphs, headings, lists, quotes,
// fenced code, **bold**, *italic*, `code` and http(s) links. It never parses HTML: any HTML
// in the text (a model's answer) is shown as the characters it is.

import { h } from "./dom.js";

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;

/** Markdown text -> a DocumentFragment. */
export function render(text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) out.append(h("p", null, lineBreaks(para)));
    para = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = FENCE.exec(line))) {
      flush();
      const marker = m[1];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(marker)) body.push(lines[i++]);
      i += 1; // the closing fence (or the end, while a stream is still arriving)
      const code = h("code", null, body.join("\n"));
      out.append(h("pre", m[2] ? { "data-lang": m[2] } : null, code));
      continue;
    }
    if (!line.trim()) {
      flush();
      i += 1;
    } else if ((m = HEADING.exec(line))) {
      flush();
      out.append(h(`h${Math.min(m[1].length + 2, 6)}`, null, inline(m[2])));
      i += 1;
    } else if (RULE.test(line)) {
      flush();
      out.append(h("hr"));
      i += 1;
    } else if (ITEM.test(line)) {
      flush();
      i = list(lines, i, out);
    } else if (QUOTE.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        quoted.push(m[1]);
        i += 1;
      }
      const q = h("blockquote");
      q.append(render(quoted.join("\n")));
      out.append(q);
    } else {
      para.push(line.trim());
      i += 1;
    }
  }
  flush();
  return out;
}

/** A run of list items from lines[i]; nested items (more indented) become a nested list. */
function list(lines, i, out) {
  const first = ITEM.exec(lines[i]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const el = h(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) el.start = parseInt(first[2], 10);
  let item = null;
  while (i < lines.length) {
    const line = lines[i];
    const m = ITEM.exec(line);
    if (m && m[1].length === indent && /\d/.test(m[2]) === ordered) {
      item = h("li", null, inline(m[3]));
      el.append(item);
      i += 1;
    } else if (m && m[1].length > indent && item) {
      i = list(lines, i, item);
    } else if (line.trim() && /^\s+/.test(line) && !m && item) {
      item.append(h("br"), ...inline(line.trim())); // a continuation line
      i += 1;
    } else {
      break;
    }
  }
  out.append(el);
  return i;
}

function lineBreaks(lines) {
  const nodes = [];
  lines.forEach((line, n) => {
    if (n) nodes.push(h("br"));
    nodes.push(...inline(line));
  });
  return nodes;
}

// code span | [text](url) | **bold** | __bold__ | *italic* | _italic_ | bare URL
const INLINE = new RegExp([
  /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source,
  /\[([^\]\n]+)\]\(\s*([^)\s]+)(?:\s+"[^"\n]*")?\s*\)/.source,
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source,
  /__(?=\S)([\s\S]*?\S)__/.source,
  /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source,
  /(?<![\p{L}\p{N}_])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\p{L}\p{N}_])/.source,
  /(https?:\/\/[^\s<>()"']*[^\s<>()"'.,;:!?])/.source,
].join("|"), "gu");

/** Inline Markdown -> an array of nodes. */
export function inline(text) {
  const nodes = [];
  let last = 0;
  INLINE.lastIndex = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) nodes.push(document.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    if (m[1] !== undefined) nodes.push(h("code", null, m[2]));
    else if (m[3] !== undefined) nodes.push(link(m[4], inline(m[3]), m[0]));
    else if (m[5] !== undefined || m[6] !== undefined) {
      nodes.push(h("strong", null, inline(m[5] ?? m[6])));
    } else if (m[7] !== undefined || m[8] !== undefined) {
      nodes.push(h("em", null, inline(m[7] ?? m[8])));
    } else nodes.push(link(m[9], [m[9]], m[0]));
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

/** A link only to http(s); anything else (javascript:, data:, ...) stays text. */
function link(href, children, source) {
  let url;
  try {
    url = new URL(href);
  } catch {
    return document.createTextNode(source);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return document.createTextNode(source);
  }
  return h("a", { href: url.href, rel: "noopener noreferrer", target: "_blank" }, children);
}
