// The console's shell: sign-in (a pasted API key, or the one-time `#login=TOKEN` link that
// `ondevice ui` prints), the session check, navigation, the hash router, sign-out, the light/dark
// toggle and error display. Pages are modules under `pages/` exporting `title`, `scope` and
// `render(root, ctx)`; without a session only the sign-in form is shown.

import { api, ApiError, hasScope, ndjson, setCsrfToken, setUnauthorizedHandler, sse } from "./lib/api.js";
import { clear, el, errorBox, replace } from "./lib/dom.js";
import * as status from "./pages/status.js";
import * as models from "./pages/models.js";
import * as chat from "./pages/chat.js";
import * as jobs from "./pages/jobs.js";
import * as collections from "./pages/collections.js";
import * as packs from "./pages/packs.js";
import * as diagnostics from "./pages/diagnostics.js";
import * as keys from "./pages/keys.js";

/** Route name → page module, in navigation order. */
const PAGES = { status, models, chat, jobs, collections, packs, diagnostics, keys };
const DEFAULT_PAGE = "status";
const THEME_KEY = "ondevice.theme";

const $ = (id) => document.getElementById(id);

const shell = {
  session: null,
  cleanup: null,
  generation: 0,
  noticeTimer: null,
};

// ---- theme -------------------------------------------------------------------------------

function storedTheme() {
  try {
    const t = localStorage.getItem(THEME_KEY);
    return t === "light" || t === "dark" ? t : null;
  } catch {
    return null;
  }
}

function effectiveTheme() {
  return storedTheme() ?? (window.matchMedia?.("(prefers-color-scheme: dark)").matches ? "dark" : "light");
}

function applyTheme() {
  const stored = storedTheme();
  if (stored) document.documentElement.dataset.theme = stored;
  else delete document.documentElement.dataset.theme;
  const dark = effectiveTheme() === "dark";
  // A toggle button: a constant label, its state in aria-pressed.
  const button = $("theme-toggle");
  button.setAttribute("aria-pressed", String(dark));
  button.title = dark ? "Dark theme on: press for the light theme" : "Light theme on: press for the dark theme";
}

function toggleTheme() {
  const next = effectiveTheme() === "dark" ? "light" : "dark";
  try {
    localStorage.setItem(THEME_KEY, next);
  } catch {
    // Storage disabled: the toggle still works for this page view.
    document.documentElement.dataset.theme = next;
  }
  applyTheme();
}

// ---- messages ----------------------------------------------------------------------------

function notify(message) {
  const node = $("notice");
  node.textContent = message;
  clearTimeout(shell.noticeTimer);
  shell.noticeTimer = setTimeout(() => {
    node.textContent = "";
  }, 6000);
}

function showError(err) {
  if (err?.name === "AbortError") return;
  if (!(err instanceof ApiError)) console.error(err);
  const box = errorBox(err);
  const dismiss = el("button", {
    type: "button",
    class: "ghost small",
    "aria-label": "Dismiss this error",
    text: "Dismiss",
    on: { click: () => box.remove() },
  });
  box.append(" ", dismiss);
  replace($("global-error"), box);
}

function clearError() {
  clear($("global-error"));
}

// ---- session -----------------------------------------------------------------------------

function setSession(session) {
  shell.session = session;
  setCsrfToken(session?.csrf_token ?? null);
  const who = $("who");
  if (session) {
    who.textContent = `${session.key_name || session.key_id} · ${(session.scopes ?? []).join(", ")}`;
    who.title = session.expires_at ? `Session until ${new Date(session.expires_at).toLocaleString()}` : "";
  } else {
    who.textContent = "";
    who.title = "";
  }
  $("logout").hidden = !session;
  $("nav").hidden = !session;
  renderNav();
}

function renderNav() {
  const nav = clear($("nav"));
  if (!shell.session) return;
  const current = routeName();
  const items = Object.entries(PAGES)
    .filter(([, page]) => hasScope(shell.session, page.scope))
    .map(([name, page]) =>
      el(
        "li",
        {},
        el("a", {
          href: `#/${name}`,
          "data-testid": `nav-${name}`,
          "aria-current": name === current ? "page" : null,
          text: page.title,
        }),
      ),
    );
  nav.append(el("ul", {}, items));
}

function stopPage() {
  shell.generation += 1;
  const cleanup = shell.cleanup;
  shell.cleanup = null;
  if (typeof cleanup === "function") {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
  }
}

function showLogin(message) {
  stopPage();
  setSession(null);
  document.title = "Sign in · ondevice";
  const keyInput = el("input", {
    id: "login-key",
    type: "password",
    name: "key",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "odk_…",
    "data-testid": "login-key",
    "aria-describedby": "login-hint",
  });
  const errors = el("div", { "data-testid": "login-error" });
  const submit = el("button", { type: "submit", "data-testid": "login-submit", text: "Sign in" });
  const form = el(
    "form",
    { class: "card login", "aria-labelledby": "login-title", "data-testid": "login-form" },
    el("h1", { id: "login-title", text: "Sign in to ondevice" }),
    message ? el("p", { class: "notice-inline", role: "status", text: message }) : null,
    el("label", { for: "login-key", text: "API key" }),
    keyInput,
    el(
      "p",
      { id: "login-hint", class: "hint" },
      "Paste a key from ",
      el("code", { text: "ondevice keys create" }),
      ", or run ",
      el("code", { text: "ondevice ui" }),
      " for a one-time sign-in link. The key is exchanged for a session cookie and not stored by the page.",
    ),
    submit,
    errors,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(errors);
    submit.disabled = true;
    try {
      const session = await api("POST", "/api/v1/ui/session", { key: keyInput.value.trim() });
      keyInput.value = "";
      signedIn(session);
    } catch (err) {
      errors.append(errorBox(err));
      keyInput.focus();
    } finally {
      submit.disabled = false;
    }
  });
  replace($("main"), form);
  keyInput.focus();
}

function signedIn(session) {
  clearError();
  setSession(session);
  if (!routeName(true)) history.replaceState(null, "", `#/${DEFAULT_PAGE}`);
  route();
}

async function logout() {
  try {
    await api("DELETE", "/api/v1/ui/session");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      showLogin();
      showError(err);
      return;
    }
  }
  showLogin("Signed out.");
}

// ---- routing -----------------------------------------------------------------------------

/** The page named by the hash (`#/models` → `models`); the default page when it names none. */
function routeName(strict = false) {
  const m = /^#\/([a-z]+)/.exec(location.hash);
  if (m && m[1] in PAGES) return m[1];
  return strict ? null : DEFAULT_PAGE;
}

function navigate(hash) {
  const target = hash.startsWith("#") ? hash : `#${hash}`;
  if (location.hash === target) route();
  else location.hash = target;
}

async function route() {
  if (!shell.session) {
    showLogin();
    return;
  }
  stopPage();
  const generation = shell.generation;
  const name = routeName();
  const page = PAGES[name];
  renderNav();
  clearError();
  document.title = `${page.title} · ondevice`;
  const root = el("section", { class: "page", "data-page": name, "aria-label": page.title });
  replace($("main"), root);
  if (!hasScope(shell.session, page.scope)) {
    root.append(
      el("h1", { text: page.title }),
      el("p", {
        class: "needs-scope",
        "data-testid": "needs-scope",
        text: `This page needs the "${page.scope}" scope; the key of this session has ${(shell.session.scopes ?? []).join(", ") || "none"}.`,
      }),
    );
    return;
  }
  const ctx = {
    session: shell.session,
    api,
    sse,
    ndjson,
    el,
    navigate,
    notify,
    showError,
    hasScope: (scope) => hasScope(shell.session, scope),
  };
  try {
    const cleanup = await page.render(root, ctx);
    if (generation !== shell.generation) {
      if (typeof cleanup === "function") cleanup();
    } else {
      shell.cleanup = cleanup;
    }
  } catch (err) {
    if (generation === shell.generation) showError(err);
  }
}

// ---- start -------------------------------------------------------------------------------

async function start() {
  applyTheme();
  $("theme-toggle").addEventListener("click", toggleTheme);
  window.matchMedia?.("(prefers-color-scheme: dark)").addEventListener?.("change", applyTheme);
  $("logout").addEventListener("click", logout);
  document.querySelector(".skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    $("main").focus();
  });
  setUnauthorizedHandler(() => {
    if (shell.session) showLogin("Your session ended; sign in again.");
  });
  window.addEventListener("hashchange", () => {
    if (location.hash.startsWith("#login=")) {
      loginWithToken();
      return;
    }
    if (shell.session) route();
  });

  if (location.hash.startsWith("#login=")) {
    await loginWithToken();
    return;
  }
  try {
    signedIn(await api("GET", "/api/v1/ui/session"));
  } catch (err) {
    showLogin();
    if (!(err instanceof ApiError && err.status === 401)) showError(err);
  }
}

/** Exchanges the one-time token of a `#login=TOKEN` link for a session; the token leaves the URL first. */
async function loginWithToken() {
  const token = decodeURIComponent(location.hash.slice("#login=".length));
  history.replaceState(null, "", `${location.pathname}${location.search}#/${DEFAULT_PAGE}`);
  try {
    signedIn(await api("POST", "/api/v1/ui/session", { login_token: token }));
  } catch (err) {
    showLogin("That sign-in link did not work (each link works once, for two minutes); paste a key or run `ondevice ui` again.");
    showError(err);
  }
}

start();
