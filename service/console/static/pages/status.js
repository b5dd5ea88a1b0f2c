// Status: model, device, gallery size, index, operating points and replication (GET /readyz);
// for keys with scope audit, the latest audit events; with scope admin, the keys of this
// gallery (list, create, revoke).
import { ApiError, del, get, getKey, post } from "../api.js";
import { confirmAction, errorText, fill, h, message, operatingPoint, when } from "../dom.js";

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
  const scopes = SCOPES.map((scope) => h("label", { class: "inline" },
    h("input", { type: "checkbox", value: scope, checked: DEFAULT_SCOPES.includes(scope) }),
    scope));
  const create = async (event) => {
    event.preventDefault();
    const chosen = scopes.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value);
    try {
      const key = await post("/keys", { name: name.value, scopes: chosen });
      const shown = message("ok", `Key “${key.name}” (${key.key_id}) created. Copy it now, `
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
    h("form", { class: "actions", onsubmit: create }, name, scopes,
      h("button", { type: "submit", class: "secondary" }, "Create key")),
    created);
}

export function statusPage(view) {
  const server = h("section", { class: "card", id: "server" }, message("info", "Loading…"));
  const events = h("section", { class: "card", id: "audit-events" });
  const keyList = h("section", { class: "card", id: "key-list" });
  view.append(h("h1", {}, "Status"), server, events, keyList);
  readiness(server);
  audit(events);
  keys(keyList);
}
