// A small Markdown renderer that builds DOM nodes: paragraphs, headings, lists, quotes,
// fenced code, **bold**, *italic*, `code` and http(s) links. It never parses HTML: any HTML
// in the text (a model's answer) is shown as the characters it is. Its time is linear in
// the text (a model's answer may be hostile): inline markers are matched by scanning
// forward, never by backtracking; quotes and lists nest at most MAX_DEPTH deep.

import { h } from "./dom.js";

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const CLOSING_FENCE = /^\s{0,3}(`{3,}|~{3,})\s*$/; // no info string (CommonMark)
const HEADING = /^\s{0,3}(#{1,6})(?:\s+(.*))?$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const MAX_DEPTH = 16; // quotes and lists deeper than this are shown as text
const MAX_INLINE = 10000; // a longer line is shown as text

/** Markdown text -> a DocumentFragment; text that cannot be rendered is shown as text. */
export function render(text) {
  try {
    return blocks(text.replace(/\r\n?/g, "\n").split("\n"), 0);
  } catch {
    const out = document.createDocumentFragment();
    out.append(text);
    return out;
  }
}

/** Does `line` close a fenced block opened with `marker`? */
function closes(line, marker) {
  const m = CLOSING_FENCE.exec(line);
  return m !== null && m[1][0] === marker[0] && m[1].length >= marker.length;
}

function blocks(lines, depth) {
  const out = document.createDocumentFragment();
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
      while (i < lines.length && !closes(lines[i], marker)) body.push(lines[i++]);
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
      out.append(h(`h${Math.min(m[1].length + 2, 6)}`, null, inline(headingText(m[2] ?? ""))));
      i += 1;
    } else if (RULE.test(line)) {
      flush();
      out.append(h("hr"));
      i += 1;
    } else if (ITEM.test(line)) {
      flush();
      i = list(lines, i, out, depth + 1);
    } else if (QUOTE.test(line) && depth < MAX_DEPTH) {
      flush();
      const quoted = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        quoted.push(m[1]);
        i += 1;
      }
      out.append(h("blockquote", null, blocks(quoted, depth + 1)));
    } else {
      para.push(line.trim());
      i += 1;
    }
  }
  flush();
  return out;
}

/** A heading's text without its optional closing #s. */
function headingText(text) {
  const trimmed = text.trimEnd();
  let end = trimmed.length;
  while (end > 0 && trimmed[end - 1] === "#") end -= 1;
  return end === 0 || /\s/.test(trimmed[end - 1]) ? trimmed.slice(0, end).trimEnd() : trimmed;
}

/** A run of list items from lines[i]; nested items (more indented) become a nested list. */
function list(lines, i, out, depth) {
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
    } else if (m && m[1].length > indent && item && depth < MAX_DEPTH) {
      i = list(lines, i, item, depth + 1);
    } else if (line.trim() && /^\s+/.test(line) && item) {
      item.append(h("br"), ...inline(line.trim())); // a continuation line (or too deep)
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

// At an opening marker, a sticky pattern for the whole span: each of these scans only its
// own stretch of text ([...] holds no bracket, a URL no bracket or parenthesis), so trying
// them at every opener stays linear.
const LINK = /\[([^[\]\n]+)\]\(\s*([^\s()[\]]+)(?:\s+"[^"\n]*")?\s*\)/y;
const BARE_URL = /https?:\/\/[^\s<>()"']*[^\s<>()"'.,;:!?]/y;
// Closing markers, looked for forward from the opener (see `next` in inline()).
const CLOSERS = {
  "**": /(?<=\S)\*\*/g,
  "__": /(?<=\S)__/g,
  "*": /(?<=[^\s*])\*/g,
  "_": /(?<=[^\s_])_(?![\p{L}\p{N}_])/gu,
};
const WORD = /[\p{L}\p{N}_]/u;
const SPECIAL = /[`[*_h]/g;

/** Inline Markdown -> an array of nodes: `code`, [text](url), **bold**, __bold__, *italic*,
 * _italic_, bare http(s) URLs. */
export function inline(text) {
  if (text.length > MAX_INLINE) return [document.createTextNode(text)];
  // The first closer at or after `from`, remembered: openers come left to right, so each
  // kind of closer is searched for over each stretch of the text once.
  const found = new Map();
  const next = (key, pattern, from) => {
    let f = found.get(key);
    if (!f) found.set(key, (f = { at: Infinity, re: null }));
    if (f.at >= 0 && f.at < from || f.at === Infinity) {
      f.re ??= typeof pattern === "function" ? pattern() : pattern;
      f.re.lastIndex = from;
      f.at = f.re.exec(text)?.index ?? -1;
    }
    return f.at;
  };
  const nodes = [];
  let last = 0; // text[last, i) is plain text not yet in nodes
  let i = 0;
  const take = (end, node) => {
    if (i > last) nodes.push(document.createTextNode(text.slice(last, i)));
    nodes.push(node);
    last = i = end;
  };
  while (i < text.length) {
    const c = text[i];
    let m;
    let end;
    if (c === "`") {
      let n = 1;
      while (text[i + n] === "`") n += 1;
      end = next(n, () => new RegExp(`(?<!\`)\`{${n}}(?!\`)`, "g"), i + n);
      if (end >= 0) take(end + n, h("code", null, text.slice(i + n, end)));
      else i += n; // no closing run of that length: the backticks are text
      continue;
    }
    if (c === "[") {
      LINK.lastIndex = i;
      if ((m = LINK.exec(text))) {
        take(i + m[0].length, link(m[2], inline(m[1]), m[0]));
        continue;
      }
    } else if (c === "*" || c === "_") {
      const double = c + c;
      if (text.startsWith(double, i) && /\S/.test(text[i + 2] ?? "")
          && (end = next(double, CLOSERS[double], i + 3)) >= 0) {
        take(end + 2, h("strong", null, inline(text.slice(i + 2, end))));
        continue;
      }
      const opens = /\S/.test(text[i + 1] ?? "") && text[i + 1] !== c
        && !(c === "_" && WORD.test(text[i - 1] ?? ""));
      if (opens
          && (end = next(c, CLOSERS[c], i + 2)) >= 0) {
        take(end + 1, h("em", null, inline(text.slice(i + 1, end))));
        continue;
      }
    } else if (c === "h") {
      BARE_URL.lastIndex = i;
      if ((m = BARE_URL.exec(text))) {
        take(i + m[0].length, link(m[0], [m[0]], m[0]));
        continue;
      }
    }
    SPECIAL.lastIndex = i + 1; // on to the next character that may open something
    i = SPECIAL.exec(text)?.index ?? text.length;
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

/** Markdown arriving in pieces, shown in `el`: the returned function takes all the text so
 * far. Finished blocks (up to a blank line outside a fenced block) are rendered once and
 * kept; only the last block is rendered again on each call. */
export function streaming(el) {
  let done = 0; // text[0, done) is rendered for good
  let scanned = 0; // the start of the first line not looked at yet
  let fence = null; // the marker of the fenced block open at `scanned`
  let tail = []; // the last block's nodes, replaced on each call
  return (text) => {
    let cut = done;
    let end;
    while ((end = text.indexOf("\n", scanned)) >= 0) {
      const line = text.slice(scanned, end);
      scanned = end + 1;
      let m;
      if (fence) {
        if (closes(line, fence)) fence = null;
      } else if ((m = FENCE.exec(line))) {
        fence = m[1];
      } else if (!line.trim()) {
        cut = scanned;
      }
    }
    for (const node of tail) node.remove();
    if (cut > done) {
      el.append(render(text.slice(done, cut)));
      done = cut;
    }
    const rest = render(text.slice(done));
    tail = [...rest.childNodes];
    el.append(rest);
  };
}
