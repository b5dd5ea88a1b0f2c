// The console's shell: who we are (a key, or a keyless loopback server), the navigation, and
// a hash router (#/gallery, #/subject/<id>, #/enroll, #/identify, #/verify, #/status).
import { get, getKey, setKey, whenUnauthorized } from "./api.js";
import { errorText, h, message, releaseUrls } from "./dom.js";
import { enrollPage } from "./pages/enroll.js";
import { galleryPage } from "./pages/gallery.js";
import { identifyPage } from "./pages/identify.js";
import { checkKey, signInPage } from "./pages/signin.js";
import { statusPage } from "./pages/status.js";
import { subjectPage } from "./pages/subject.js";
import { verifyPage } from "./pages/verify.js";

const view = document.getElementById("view");
const who = document.getElementById("who");
const signOut = document.getElementById("sign-out");
let session = null; // {keyless, read}: read = the key may list the gallery (scope read)
let signInNotice = null;
let rendering = 0;

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?", 2);
  const [page, ...rest] = path.split("/");
  return { page: page || "", arg: rest.length ? decodeURIComponent(rest.join("/")) : null,
    params: new URLSearchParams(query) };
}

// The server decides: with a key, GET /subjects says whether it is valid (401) and may read
// the gallery (scope `read`: 403 or not); without one, a 200 means a keyless server on the loopback, which needs none.
async function establish() {
  if (session) return session;
  if (getKey()) {
    const result = await checkKey(getKey());
    if (result.ok) session = { keyless: false, read: result.read };
    else if (result.error.status === 401) {
      signInNotice = `Your API key was not accepted: ${errorText(result.error)}.`;
    } else {
      signInNotice = `The key could not be checked: ${errorText(result.error)}. Reload to retry.`;
    }
    return session;
  }
  for (let attempt = 0; ; attempt += 1) {
    try {
      await get("/subjects", { query: { limit: 1 }, quiet: true });
      session = { keyless: true, read: true };
    } catch (err) {
      // Models still loading (a few seconds after start): wait for them, up to 2 minutes.
      if (err.code === "not_ready" && attempt < 60) {
        view.replaceChildren(message("info", "The server is still loading its models…"));
        await new Promise((resolve) => setTimeout(resolve, 2000));
        continue;
      }
      if (err.status !== 401) signInNotice = errorText(err);
    }
    return session;
  }
}

whenUnauthorized((err) => {
  session = null;
  setKey(null);
  signInNotice = `The server refused the key: ${errorText(err)}. Sign in again.`;
  render();
});

function showWho() {
  if (!session) {
    who.textContent = "not signed in";
    signOut.hidden = true;
  } else if (session.keyless) {
    who.textContent = "no key needed (this server has no API keys; loopback only)";
    signOut.hidden = true;
  } else {
    who.textContent = session.read ? "signed in (the key may read the gallery)"
      : "signed in (no read scope: the gallery pages are closed)";
    signOut.hidden = false;
  }
  const current = route().page || "gallery";
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    link.classList.toggle("current", link.dataset.page === current);
  }
}

async function render() {
  const token = ++rendering;
  window.dispatchEvent(new Event("console:leave")); // the webcam, if on, is stopped
  releaseUrls();
  await establish();
  if (token !== rendering) return;
  view.replaceChildren();
  showWho();
  if (!session) {
    const notice = signInNotice;
    signInNotice = null;
    signInPage(view, { notice, onSignedIn: (result) => {
      session = { keyless: false, read: result.read };
      const target = result.read ? "#/gallery" : "#/identify";
      if (location.hash === target) render();
      else location.hash = target;
    } });
    return;
  }
  const notice = sessionStorage.getItem("faceserve.notice");
  if (notice) {
    sessionStorage.removeItem("faceserve.notice");
    view.append(message("ok", notice));
  }
  const { page, arg, params } = route();
  const pages = {
    gallery: () => galleryPage(view),
    subject: () => subjectPage(view, arg || ""),
    enroll: () => enrollPage(view, params),
    identify: () => identifyPage(view),
    verify: () => verifyPage(view, params),
    status: () => statusPage(view),
  };
  const show = pages[page] || pages[session.read ? "gallery" : "identify"];
  show();
}

signOut.addEventListener("click", () => {
  setKey(null);
  session = null;
  render();
});
window.addEventListener("hashchange", render);
// A click on the page already shown starts it afresh (no hashchange fires then).
document.querySelector("header").addEventListener("click", (event) => {
  const link = event.target.closest("a[href^='#']");
  if (link && link.getAttribute("href") === location.hash) render();
});
render().catch((err) => view.replaceChildren(h("p", { class: "message error" }, String(err))));
