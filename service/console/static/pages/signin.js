// Sign in: paste an API key. It is checked against GET /subjects: 401 means not valid (or
// revoked); 403 means valid but without scope `read` (the gallery pages are then closed to
// it; enroll, identify and verify stay open to the scopes they need).
import { ApiError, get, setKey } from "../api.js";
import { errorText, h, message } from "../dom.js";

export async function checkKey(key) {
  setKey(key);
  try {
    await get("/subjects", { query: { limit: 1 }, quiet: true });
    return { ok: true, read: true };
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) return { ok: true, read: false };
    if (err.status === 401) setKey(null); // else (not ready, offline) the key may be fine
    return { ok: false, error: err };
  }
}

export function signInPage(view, { notice, onSignedIn }) {
  const input = h("input", { type: "password", id: "api-key", name: "api-key",
    autocomplete: "off", spellcheck: "false", required: true,
    placeholder: "fs_…" });
  const status = h("div", { class: "signin-status" });
  if (notice) status.append(message("error", notice));
  const form = h("form", { class: "card signin", onsubmit: async (event) => {
    event.preventDefault();
    status.replaceChildren(message("info", "Checking the key…"));
    const result = await checkKey(input.value.trim());
    if (result.ok) {
      onSignedIn(result);
      return;
    }
    const err = result.error;
    const why = err.status === 401
      ? `This API key was not accepted: ${errorText(err)}.`
      : `The key could not be checked: ${errorText(err)}.`;
    status.replaceChildren(message("error", why));
  } },
  h("h1", {}, "Sign in"),
  h("p", {}, "Paste an API key (from ", h("code", {}, "faceserve keys create"),
    " or POST /keys). It is kept in this tab only, until you sign out or close it."),
  h("label", { for: "api-key" }, "API key"),
  input,
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")),
  status);
  view.append(form);
  input.focus();
}
