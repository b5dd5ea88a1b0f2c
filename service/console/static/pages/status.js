// Status: model, device, gallery size, index, operating points and replication (GET /readyz);
// for keys with scope audit, the latest audit events; with scope admin, the keys of this
// gallery (list, create with any scopes, each explained, revoke), and for an admin of the
// default gallery the galleries (counts, create, delete).
import { ApiError, del, get, getKey, post } from "../api.js";
import { confirmAction, errorText, fill, h, message, operatingPoint, when } from "../dom.js";
import { SCOPE_HELP, can, needs, session } from "../session.js";

// The scopes of service/security/keys.py SCOPES, in its order.
const SCOPES = ["enroll", "recognize", "read", "erase", "metrics", "audit", "admin"];
const DEFAULT_SCOPES = ["enroll", "recognize"];

function facts(rows) {
  return h("dl", { class: "facts" }, rows.filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
}

async function readiness(section) {
  try {
    const r = await get("/readyz");
    const lag = r.replication;
    fill(section, h("h2", {}, "Server"), facts([
      ["Model", r.model], ["Device", r.device],
      ["Faces in the gallery", r.gallery_faces], ["Subjects", r.gallery_subjects],
      ["Index", `${r.index_kind} (loaded from ${r.index_source})`],
      ["Micro-batching", r.batching ? "on" : "off"],
      ["Replication", lag ? `${lag.changes_behind ?? "?"} changes, `
        + `${lag.seconds_behind ?? "?"} s behind${lag.error ? ` (error: ${lag.error})` : ""}`
        : "not a replica"],
    ]),
    r.operating_point ? h("h3", {}, "Verify") : null, operatingPoint(r.operating_point),
    r.identify_operating_point ? h("h3", {}, "Identify") : null,
    operatingPoint(r.identify_operating_point));
  } catch (err) {
    section.replaceChildren(message("error", errorText(err)));
  }
}

async function latestEvents(limit = 20) {
  let cursor = null;
  let events = [];
  for (let pages = 0; pages < 50; pages += 1) {
    const page = await get("/audit", { query: { cursor, limit: 1000 } });
    events = events.concat(page.events).slice(-limit);
    if (page.next_cursor === null || page.next_cursor === undefined) break;
    cursor = page.next_cursor;
  }
  return events.reverse();
}

async function audit(section) {
  if (!can("audit")) {
    section.replaceChildren(h("h2", {}, "Audit"), needs("audit", "Reading the audit log"));
    return;
  }
  try {
    const events = await latestEvents();
    section.replaceChildren(h("h2", {}, "Recent audit events"), events.length
      ? h("table", { id: "audit" }, h("thead", {}, h("tr", {}, ["When", "Key", "Action",
        "Subject", "Face"].map((t) => h("th", {}, t)))),
      h("tbody", {}, events.map((e) => h("tr", {}, [when(e.at), e.key_name, e.action,
        e.subject_id ?? "", e.face_id ?? ""].map((t) => h("td", {}, t))))))
      : h("p", { class: "muted" }, "No events yet."));
  } catch (err) {
    section.replaceChildren(h("h2", {}, "Audit"), message("info", err instanceof ApiError
      && err.status === 403 ? "Audit events are shown to keys with scope audit only."
      : errorText(err)));
  }
}

async function keys(section) {
  if (!can("admin")) {
    section.replaceChildren(h("h2", {}, "API keys"), needs("admin", "Managing API keys"));
    return;
  }
  let list;
  try {
    list = (await get("/keys")).keys;
  } catch (err) {
    section.replaceChildren(h("h2", {}, "API keys"), message("info", err instanceof ApiError
      && err.status === 403 ? "Keys are managed with keys of scope admin only."
      : errorText(err)));
    return;
  }
  const created = h("div", { id: "key-created" });
  const name = h("input", { type: "text", id: "key-name", maxlength: 64, required: true,
    placeholder: "name" });
  // Every scope the server knows (README: API keys and scopes); a new key gets the two a
  // client app usually needs unless others are ticked.
  const scopes = SCOPES.map((scope) => h("label", { class: "inline scope" },
    h("input", { type: "checkbox", value: scope, checked: DEFAULT_SCOPES.includes(scope) }),
    h("code", {}, scope), h("span", { class: "muted" }, SCOPE_HELP[scope])));
  // An admin of the default gallery may give a key to another gallery (its first key, say).
  const operator = !(session() && session().gallery);
  const gallery = operator ? h("input", { type: "text", id: "key-gallery", maxlength: 64,
    placeholder: "default gallery" }) : null;
  const create = async (event) => {
    event.preventDefault();
    const chosen = scopes.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value);
    try {
      const body = { name: name.value, scopes: chosen };
      if (gallery && gallery.value.trim()) body.gallery = gallery.value.trim();
      const key = await post("/keys", body);
      const shown = message("ok", `Key “${key.name}” (${key.key_id}`
        + `${key.gallery ? `, gallery ${key.gallery}` : ""}) created. Copy it now, `
        + "it is not shown again: ", h("code", { class: "token" }, key.token));
      // Signed in without a key (a keyless server), the list is not read again: this key
      // now guards every call, and its token must stay on screen until it is copied.
      if (getKey()) await keys(section);
      section.append(shown);
    } catch (err) {
      created.replaceChildren(message("error", errorText(err)));
    }
  };
  const revoke = async (key) => {
    if (!await confirmAction(`Revoke key “${key.name}” (${key.key_id})? Clients using it are `
      + "refused at once, for good.", "Revoke")) return;
    try {
      await del(`/keys/${encodeURIComponent(key.key_id)}`);
      await keys(section);
    } catch (err) {
      section.append(message("error", errorText(err)));
    }
  };
  section.replaceChildren(h("h2", {}, "API keys"),
    h("table", { id: "keys" }, h("thead", {}, h("tr", {}, ["Name", "Id", "Scopes", "Created",
      "Revoked", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, list.map((k) => h("tr", {}, h("td", {}, k.name), h("td", {}, k.key_id),
      h("td", {}, k.scopes.join(", ")), h("td", {}, when(k.created_at)),
      h("td", {}, k.revoked_at ? when(k.revoked_at) : ""),
      h("td", {}, k.revoked_at ? "" : h("button", { type: "button", class: "danger small",
        onclick: () => revoke(k) }, "Revoke")))))),
    h("form", { id: "key-form", onsubmit: create },
      h("h3", {}, "New key"),
      h("label", { for: "key-name" }, "Name"), name,
      gallery ? [h("label", { for: "key-gallery" }, "Gallery (empty: the default one)"),
        gallery] : null,
      h("fieldset", { class: "scopes" }, h("legend", {}, "Scopes (none implies another)"),
        scopes),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "secondary" },
        "Create key"))),
    created);
}

const count = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function holds(g) {
  return `${count(g.subjects, "subject")}, ${count(g.faces, "face")} and `
    + `${count(g.unknown_faces, "pool face")}`;
}

// Galleries (tenants): admin keys of the default gallery only (GET/POST/DELETE /galleries).
async function galleries(section) {
  const current = session();
  if (!can("admin") || (current && current.gallery)) {
    section.replaceChildren(h("h2", {}, "Galleries"), current && current.gallery && can("admin")
      ? message("info", `This key is bound to gallery ${current.gallery}: galleries are `
        + "managed by admin keys of the default gallery only.")
      : needs("admin", "Managing galleries"));
    return;
  }
  let list;
  try {
    list = (await get("/galleries")).galleries;
  } catch (err) {
    section.replaceChildren(h("h2", {}, "Galleries"), message("error", errorText(err)));
    return;
  }
  const status = h("div", { id: "gallery-status" });
  const name = h("input", { type: "text", id: "gallery-name", maxlength: 64, required: true,
    placeholder: "name (letters, digits, _ . -)", "aria-label": "New gallery's name" });
  const create = async (event) => {
    event.preventDefault();
    try {
      const made = await post("/galleries", { name: name.value });
      await galleries(section);
      section.querySelector("#gallery-status").replaceChildren(message("ok",
        `Gallery “${made.name}” created, empty. Give it a key below (scope admin lets its `
        + "owner manage its own keys)."));
    } catch (err) {
      status.replaceChildren(message("error", errorText(err)));
    }
  };
  const remove = async (g) => {
    const empty = !(g.subjects || g.faces || g.unknown_faces);
    const ok = await confirmAction(empty
      ? `Delete gallery “${g.name}”? It is empty; its ${count(g.active_keys, "active key")} `
        + "will be revoked."
      : `Delete gallery “${g.name}” with its ${holds(g)}? Everything is erased for good and `
        + `its ${count(g.active_keys, "active key")} revoked first; its audit log is kept.`,
    empty ? "Delete gallery" : "Erase and delete");
    if (!ok) return;
    try {
      const done = await del(`/galleries/${encodeURIComponent(g.name)}`,
        { query: empty ? {} : { force: "true" } });
      await galleries(section);
      section.querySelector("#gallery-status").replaceChildren(message("ok",
        `Gallery “${done.name}” deleted: ${count(done.subjects_deleted, "subject")}, `
        + `${count(done.faces_deleted, "face")} and `
        + `${count(done.unknown_faces_deleted, "pool face")} erased, `
        + `${count(done.keys_revoked.length, "key")} revoked.`));
    } catch (err) {
      // Filled since it was listed (409 gallery_not_empty): the new counts, asked again.
      if (err.code === "gallery_not_empty") await galleries(section);
      section.querySelector("#gallery-status").replaceChildren(message("error",
        errorText(err)));
    }
  };
  section.replaceChildren(h("h2", {}, "Galleries"),
    h("table", { id: "galleries" }, h("thead", {}, h("tr", {}, ["Gallery", "Subjects", "Faces",
      "Pool faces", "Active keys", "Created", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, list.map((g) => h("tr", { dataset: { gallery: g.name || "" } },
      h("td", {}, g.default ? h("em", {}, "default") : g.name),
      [g.subjects, g.faces, g.unknown_faces, g.active_keys].map((n) => h("td", {}, String(n))),
      h("td", {}, when(g.created_at)),
      h("td", {}, g.default ? "" : h("button", { type: "button", class: "danger small",
        onclick: () => remove(g) }, "Delete")))))),
    h("form", { class: "actions", id: "gallery-form", onsubmit: create }, name,
      h("button", { type: "submit", class: "secondary" }, "Create gallery")),
    status);
}

export function statusPage(view) {
  const server = h("section", { class: "card", id: "server" }, message("info", "Loading…"));
  const events = h("section", { class: "card", id: "audit-events" });
  const keyList = h("section", { class: "card", id: "key-list" });
  const galleryList = h("section", { class: "card", id: "gallery-list" });
  view.append(h("h1", {}, "Status"), server, events, keyList, galleryList);
  readiness(server);
  audit(events);
  keys(keyList);
  galleries(galleryList);
}
