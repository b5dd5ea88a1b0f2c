// Sign in: paste an API key. GET /readyz with it says whether it is valid and what it may do
// (`caller`: its name, scopes and gallery); for a key it does not know, GET /subjects gives
// the server's reason (401: not valid, or revoked).
import { get, setKey } from "../api.js";
import { errorText, h, message } from "../dom.js";

// The caller GET /readyz reports for the key now held (or for none, on a keyless server);
// {ok: false, error} when there is none: refused, or the server cannot tell yet.
export async function whoAmI() {
  let ready;
  try {
    ready = await get("/readyz", { quiet: true });
  } catch (err) {
    return { ok: false, error: err };
  }
  if (ready.caller) return { ok: true, caller: ready.caller };
  try {
    await get("/subjects", { query: { limit: 1 }, quiet: true });
  } catch (err) {
    if (err.status === 401) return { ok: false, error: err };
  }
  return { ok: false, error: { status: 401, code: "invalid_api_key",
    message: "the server did not recognise the key" } };
}

export async function checkKey(key) {
  setKey(key);
  const result = await whoAmI();
  if (!result.ok && result.error.status === 401) setKey(null); // else (not ready) it may be fine
  return result;
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
