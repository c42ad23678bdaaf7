// Keys page (admin): every API key (revoked ones included), a new key (name and scopes; its
// secret shown once, with a copy button), revoke. Through `/api/v1/keys`, which answers 403 to a
// key without the admin scope; that answer is shown like every other error.

import { errorBox, clear, field, formatTime, table } from "../lib/dom.js";
import { seg } from "../lib/api.js";

export const title = "Keys";
export const scope = "admin";

const SCOPES = [
  ["read", "read: list and show, query collections, status"],
  ["infer", "infer: generation and embeddings"],
  ["models", "models: registry and collection writes, publish packs"],
  ["admin", "admin: everything, keys and diagnostics included"],
];

export async function render(root, ctx) {
  const { api, el } = ctx;
  const errors = el("div", { "data-testid": "keys-errors" });
  const listBox = el("div", { "data-testid": "keys-list" });
  const showRevoked = el("input", { id: "keys-show-revoked", type: "checkbox", "data-testid": "keys-show-revoked", on: { change: () => draw() } });
  let keys = [];

  async function refresh() {
    clear(errors);
    try {
      keys = await api("GET", "/api/v1/keys");
    } catch (e) {
      clear(listBox);
      errors.append(errorBox(e));
      return;
    }
    draw();
  }

  function draw() {
    clear(listBox);
    const shown = keys.filter((k) => showRevoked.checked || !k.revoked_at);
    if (shown.length === 0) {
      listBox.append(el("p", { text: "No keys." }));
      return;
    }
    const rows = shown.map((k) => {
      const own = ctx.session && ctx.session.key_id === k.id;
      const cell = el("td", {});
      if (k.revoked_at) {
        cell.append(el("span", { class: "muted", text: `revoked ${formatTime(k.revoked_at)}` }));
      } else {
        cell.append(revokeControl(k, own));
      }
      return el("tr", { "data-testid": `key-row-${k.id}`, "data-revoked": k.revoked_at ? "true" : "false" },
        el("td", {}, el("code", { text: k.id })),
        el("th", { scope: "row", text: own ? `${k.name} (this session)` : k.name }),
        el("td", { text: k.scopes.join(", ") }),
        el("td", { text: formatTime(k.created_at) }),
        el("td", { text: formatTime(k.last_used_at) }),
        cell);
    });
    listBox.append(table(null, ["Id", "Name", "Scopes", "Created", "Last used", "State"], rows, { "data-testid": "keys-table" }));
  }

  function revokeControl(k, own) {
    const out = el("div", {});
    const confirmBox = el("div", { hidden: true, role: "group", "aria-label": `Confirm revoking ${k.name}` },
      el("p", { text: own ? "This is the key of your own session: revoking it signs you out." : `Revoke ${k.name}? Every client using it is refused at once.` }),
      el("button", { type: "button", class: "danger small", "data-testid": `key-revoke-confirm-${k.id}`, on: { click: revoke } }, "Revoke for good"),
      " ",
      el("button", { type: "button", class: "ghost small", on: { click: () => { confirmBox.hidden = true; ask.focus(); } } }, "Keep it"));
    const ask = el("button", { type: "button", class: "danger small", "aria-label": `Revoke key ${k.name}`, "data-testid": `key-revoke-${k.id}`,
      on: { click: () => { confirmBox.hidden = false; confirmBox.querySelector("button").focus(); } } }, "Revoke");
    async function revoke() {
      clear(out);
      try {
        await api("DELETE", `/api/v1/keys/${seg(k.id)}`);
        ctx.notify(`Revoked key ${k.name} (${k.id})`);
        await refresh();
      } catch (e) {
        out.append(errorBox(e));
      }
    }
    return el("div", { class: "actions" }, ask, confirmBox, out);
  }

  // ---- create ----
  const name = el("input", { id: "key-name", type: "text", maxlength: "64", pattern: "[A-Za-z0-9._\\-]{1,64}", autocomplete: "off", "data-testid": "key-name" });
  const boxes = SCOPES.map(([s, label]) => {
    const box = el("input", { id: `key-scope-${s}`, type: "checkbox", value: s, checked: s === "read", "data-testid": `key-scope-${s}` });
    return { s, node: el("div", { class: "field check" }, box, el("label", { for: box.id, text: label })), box };
  });
  const createErr = el("div", {});
  const secretBox = el("div", { "aria-live": "polite", "data-testid": "key-secret-box" });
  const createBtn = el("button", { type: "submit", "data-testid": "key-create" }, "Create key");
  async function create(ev) {
    ev.preventDefault();
    clear(createErr);
    clear(secretBox);
    const scopes = boxes.filter((b) => b.box.checked).map((b) => b.s);
    if (scopes.length === 0) {
      createErr.append(el("p", { role: "alert", class: "error-box", text: "choose at least one scope" }));
      return;
    }
    const body = { scopes };
    if (name.value.trim()) body.name = name.value.trim();
    createBtn.disabled = true;
    try {
      const k = await api("POST", "/api/v1/keys", body);
      showSecret(k);
      name.value = "";
      await refresh();
    } catch (e) {
      createErr.append(errorBox(e));
    } finally {
      createBtn.disabled = false;
    }
  }

  // The secret exists in this page only until it is dismissed: the API never shows it again.
  function showSecret(k) {
    const secret = el("input", { id: "key-secret", type: "text", readonly: true, value: k.key, spellcheck: "false", class: "mono", "data-testid": "key-secret" });
    const copied = el("span", { "aria-live": "polite", "data-testid": "key-copied" });
    const copy = el("button", { type: "button", "data-testid": "key-copy", on: { click: async () => {
      try {
        await navigator.clipboard.writeText(secret.value);
        copied.textContent = "Copied.";
      } catch {
        secret.select();
        copied.textContent = "Select-all done: press Ctrl+C (or ⌘C) to copy.";
      }
    } } }, "Copy");
    const done = el("button", { type: "button", class: "ghost", "data-testid": "key-secret-dismiss", on: { click: () => clear(secretBox) } }, "I stored it");
    secretBox.append(el("div", { class: "card", role: "group", "aria-labelledby": "key-secret-h" },
      el("h2", { id: "key-secret-h", text: `New key ${k.name} (${k.scopes.join(", ")})` }),
      el("p", { text: "Store this key now: it is shown once and cannot be shown again." }),
      el("label", { for: "key-secret", text: "Key" }),
      secret,
      el("div", { class: "actions" }, copy, done, copied)));
    secret.focus();
    secret.select();
  }

  const createForm = el("form", { class: "card", "aria-labelledby": "key-create-h", on: { submit: create } },
    el("h2", { id: "key-create-h", text: "New key" }),
    field("Name", name, "1-64 letters, digits, . _ - (default: key-<id>)").node,
    el("fieldset", {}, el("legend", { text: "Scopes" }), boxes.map((b) => b.node)),
    el("p", { class: "hint", text: "Keys do not expire by themselves; revoke a key to end it." }),
    createBtn, createErr);

  clear(root);
  root.append(
    el("h1", { text: "Keys" }),
    el("p", { text: "API keys are stored hashed; a key's secret is shown only when it is created." }),
    errors,
    secretBox,
    el("section", { class: "panel", "aria-label": "All keys" },
      el("div", { class: "row" },
        el("div", { class: "field check" }, showRevoked, el("label", { for: "keys-show-revoked", text: "Show revoked keys" })),
        el("button", { type: "button", class: "ghost", "data-testid": "keys-refresh", on: { click: refresh } }, "Refresh")),
      listBox),
    createForm);
  await refresh();
}
