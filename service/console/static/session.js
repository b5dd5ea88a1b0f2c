// The signed-in key's rights, as GET /readyz tells them (`caller`: name, scopes, gallery), so
// each page shows what the key may do and says why the rest is closed, without trying it.
import { h } from "./dom.js";

// Each scope of service/security/keys.py, in its order, with what it lets a key do.
export const SCOPE_HELP = {
  enroll: "add photos of people, rename, merge and edit subjects",
  recognize: "identify and verify faces in photos (and preview faces before enrolling)",
  read: "list the gallery: subjects, their faces, chips and metadata",
  erase: "delete faces and erase subjects (erasure requests)",
  metrics: "read the server's metrics and gallery totals (monitoring)",
  audit: "read the audit log: who enrolled or erased what, and when",
  admin: "create and revoke API keys; on the default gallery, manage galleries",
};

// What each page needs (status needs nothing: it says what the key may see).
export const PAGE_SCOPES = {
  gallery: "read", subject: "read", enroll: "enroll", identify: "recognize", verify: "recognize",
};

let current = null; // {keyless, name, scopes: [...], gallery}

export function setSession(value) {
  current = value;
}

export function session() {
  return current;
}

export function can(scope) {
  return Boolean(current && current.scopes.includes(scope));
}

// Why something is closed: "<what> needs a key with scope <scope> (...); this key has ...".
export function needsText(scope, what) {
  const held = current && current.scopes.length ? current.scopes.join(", ") : "no scope";
  return `${what} needs a key with scope ${scope} (${SCOPE_HELP[scope]}); this key has `
    + `${held}.`;
}

export function needs(scope, what) {
  return h("p", { class: "message info needs-scope", role: "status", dataset: { scope } },
    needsText(scope, what));
}

// A button (or any control) shown but disabled, with the reason beside it and as its title.
export function gate(control, scope, what) {
  if (can(scope)) return control;
  control.disabled = true;
  control.title = needsText(scope, what);
  control.classList.add("locked");
  return control;
}
