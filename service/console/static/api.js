// The console's only door to the server: the public API, with the key held in sessionStorage.
// Nothing goes into cookies or URLs; the key is sent as `Authorization: Bearer <key>`.

const KEY = "faceserve.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

// Called with the ApiError of every 401, so the app can ask for a key again.
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

function headers(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failure(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`;
  let details;
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message, details } = body.error);
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message, details);
}

// fetch + error mapping. `body` is FormData (multipart) or a plain object (JSON).
// Every operation is under the API version's prefix; pages name paths without it.
export const API = "/v1";

export async function request(method, path, { body, query, raw = false, quiet = false } = {}) {
  let url = API + path;
  if (query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.set(name, value);
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  const init = { method, headers: headers(), cache: "no-store" };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = headers({ "Content-Type": "application/json" });
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, "network", `the server cannot be reached (${err.message})`);
  }
  if (!response.ok) {
    const error = await failure(response);
    if (error.status === 401 && !quiet) onUnauthorized(error);
    throw error;
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

export const get = (path, options) => request("GET", path, options);
export const post = (path, body, options) => request("POST", path, { ...options, body });
export const patch = (path, body, options) => request("PATCH", path, { ...options, body });
export const del = (path, options) => request("DELETE", path, options);

export function subjectPath(subjectId) {
  return `/subjects/${encodeURIComponent(subjectId)}`;
}

// A stored face chip as an object URL (the key travels in a header, so no plain <img src>).
export async function chipUrl(faceId) {
  const response = await request("GET", `/faces/${encodeURIComponent(faceId)}/chip`,
    { raw: true });
  return URL.createObjectURL(await response.blob());
}
