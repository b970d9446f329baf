// The oasis console: a single page with hash routes (#/playground, #/keys, #/usage,
// #/server, #/sign-in). Each page module exports mount(root, ctx) and may return a function
// that stops it (timers, streams) when the person leaves the page.

import { api, session, setUnauthorizedHandler } from "./api.js";
import { h, clear, field, errorBox } from "./dom.js";
import * as playground from "./playground.js";
import * as keys from "./keys.js";
import * as usage from "./usage.js";
import * as server from "./server.js";

const PAGES = {
  playground: { module: playground, title: "Playground" },
  keys: { module: keys, title: "Keys", admin: true },
  usage: { module: usage, title: "Usage" },
  server: { module: server, title: "Server", admin: true },
};

const main = document.getElementById("main");
let me = null; // GET /console/api/me for the signed-in key
let stop = null;
let notice = null; // a message for the sign-in page (why the person was signed out)

/** Forget the key (and what the pages kept), then show the sign-in page. Several calls
 * failing at once each call this: only the first one navigates. */
function signOut(message) {
  const signedIn = me !== null || session.key() !== null;
  session.clear();
  me = null;
  for (const page of Object.values(PAGES)) page.module.forget?.();
  if (message) notice = message;
  if (location.hash !== "#/sign-in") location.hash = "#/sign-in"; // show() on hashchange
  else if (signedIn) show();
}

setUnauthorizedHandler((message) =>
  signOut(`Signed out: the server refused the key (${message})`));

function header() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  nav.hidden = who.hidden = !me;
  if (!me) return;
  for (const a of nav.querySelectorAll("a")) {
    a.hidden = a.hasAttribute("data-admin") && !me.admin;
  }
  const k = me.key;
  document.getElementById("who-name").textContent = k
    ? `${k.name} (${k.prefix}…)`
    : me.auth === "static" ? "operator key" : "no authentication";
  document.getElementById("who-admin").hidden = !me.admin;
  document.getElementById("sign-out").hidden = me.auth === "none";
}

function signInPage(root) {
  const input = h("input", {
    type: "password", name: "api-key", id: "api-key", autocomplete: "off", spellcheck: "false",
    required: true, placeholder: "sk-…",
  });
  const status = h("div.form-status");
  const button = h("button.primary", { type: "submit" }, "Sign in");
  const form = h("form.signin-form", { id: "sign-in-form", novalidate: true },
    field("API key", input, "Kept in this tab only (sessionStorage) until you sign out."),
    button, status);
  if (notice) status.append(errorBox(notice)); // shown until the next attempt
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    notice = null;
    clear(status);
    if (!key) {
      status.append(errorBox("Enter an API key."));
      return;
    }
    button.disabled = true;
    try {
      me = await api("/console/api/me", { key, quiet401: true });
      session.set(key);
      input.value = "";
      if (location.hash === "#/playground") show();
      else location.hash = "#/playground";
    } catch (e) {
      status.append(errorBox(e.message));
    } finally {
      button.disabled = false;
    }
  });
  root.append(h("section.signin", null,
    h("h1", null, "Sign in to oasis"),
    h("p.muted", null, "Use an API key from ", h("code", null, "oasis keys create"),
      " or the server's ", h("code", null, "--api-key"), ". Admin keys see keys, usage of every key and the server."),
    form));
  input.focus();
}

function refusal(root, title) {
  root.append(h("section.card.refusal", { id: "refusal", role: "alert" },
    h("h1", null, title),
    h("p", null, "This page needs an admin key. Sign in with one to see it."),
    h("p", null, h("a", { href: "#/playground" }, "Back to the playground"))));
}

async function show() {
  if (stop) {
    stop();
    stop = null;
  }
  const route = location.hash.replace(/^#\/?/, "").split("?")[0] || "playground";
  if (!me && session.key()) {
    try {
      me = await api("/console/api/me", { quiet401: true });
    } catch (e) {
      notice = e.status === 401
        ? `Signed out: the server refused the key (${e.message})` : e.message;
      session.clear();
    }
  }
  if (!me && !session.key() && route !== "sign-in") {
    // a server started with --no-auth needs no key
    try {
      const open = await api("/console/api/me", { key: null, quiet401: true });
      if (open.auth === "none") me = open;
    } catch {
      // expected: a key is needed
    }
  }
  header();
  clear(main);
  if (!me || route === "sign-in") {
    if (me && route === "sign-in" && me.auth === "none") {
      location.hash = "#/playground";
      return;
    }
    document.title = "Sign in · oasis";
    signInPage(main);
    return;
  }
  const page = Object.hasOwn(PAGES, route) ? PAGES[route] : null; // not #/__proto__
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === route);
  }
  if (!page) {
    location.hash = "#/playground";
    return;
  }
  document.title = `${page.title} · oasis`;
  if (page.admin && !me.admin) {
    refusal(main, `${page.title}: admin only`);
    return;
  }
  stop = page.module.mount(main, { me }) || null;
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", show);
show();
