// The console's shell: who we are (a key, or a keyless loopback server), the navigation, and
// a hash router (#/gallery, #/subject/<id>, #/enroll, #/identify, #/verify, #/status).
import { getKey, setKey, whenUnauthorized } from "./api.js";
import { errorText, h, message, releaseUrls } from "./dom.js";
import { enrollPage } from "./pages/enroll.js";
import { galleryPage } from "./pages/gallery.js";
import { identifyPage } from "./pages/identify.js";
import { signInPage, whoAmI } from "./pages/signin.js";
import { statusPage } from "./pages/status.js";
import { subjectPage } from "./pages/subject.js";
import { verifyPage } from "./pages/verify.js";
import { PAGE_SCOPES, can, needs, needsText, session, setSession } from "./session.js";

const view = document.getElementById("view");
const who = document.getElementById("who");
const signOut = document.getElementById("sign-out");
let signInNotice = null;
let rendering = 0;

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?", 2);
  const [page, ...rest] = path.split("/");
  return { page: page || "", arg: rest.length ? decodeURIComponent(rest.join("/")) : null,
    params: new URLSearchParams(query) };
}

function fromCaller(caller) {
  return { keyless: !caller.key_id, name: caller.name, scopes: caller.scopes,
    gallery: caller.gallery || null };
}

// The first page this key may open: the gallery, else identify, else enroll, else status.
function home() {
  for (const page of ["gallery", "identify", "enroll"]) if (can(PAGE_SCOPES[page])) return page;
  return "status";
}

// The server decides: GET /readyz names the caller (a valid key, or anyone on a keyless
// loopback server) with its scopes; a key it does not name was refused (GET /subjects says why).
async function establish() {
  if (session()) return session();
  for (let attempt = 0; ; attempt += 1) {
    const result = await whoAmI();
    if (result.ok) {
      setSession(fromCaller(result.caller));
      return session();
    }
    const err = result.error;
    // Models still loading (a few seconds after start): wait for them, up to 2 minutes.
    if (err.code === "not_ready" && attempt < 60) {
      view.replaceChildren(message("info", "The server is still loading its models…"));
      await new Promise((resolve) => setTimeout(resolve, 2000));
      continue;
    }
    if (getKey()) {
      if (err.status === 401) {
        setKey(null);
        signInNotice = `Your API key was not accepted: ${errorText(err)}.`;
      } else {
        signInNotice = `The key could not be checked: ${errorText(err)}. Reload to retry.`;
      }
    } else if (err.status !== 401) {
      signInNotice = errorText(err);
    }
    return null;
  }
}

whenUnauthorized((err) => {
  setSession(null);
  setKey(null);
  signInNotice = `The server refused the key: ${errorText(err)}. Sign in again.`;
  render();
});

function showWho() {
  const current = session();
  if (!current) {
    who.textContent = "not signed in";
    signOut.hidden = true;
  } else if (current.keyless) {
    who.textContent = "no key needed (this server has no API keys; loopback only)";
    signOut.hidden = true;
  } else {
    who.textContent = `signed in as “${current.name}”`
      + (current.gallery ? ` (gallery ${current.gallery})` : "")
      + ` · ${current.scopes.join(", ")}`;
    signOut.hidden = false;
  }
  const page = route().page || home();
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    link.classList.toggle("current", link.dataset.page === page);
    // A page the key may not use stays in the menu, marked, with the reason as its tooltip.
    const scope = PAGE_SCOPES[link.dataset.page];
    const locked = Boolean(current && scope && !can(scope));
    link.classList.toggle("locked", locked);
    if (locked) link.title = needsText(scope, `The ${link.textContent} page`);
    else link.removeAttribute("title");
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
  if (!session()) {
    const notice = signInNotice;
    signInNotice = null;
    signInPage(view, { notice, onSignedIn: (result) => {
      setSession(fromCaller(result.caller));
      const target = `#/${home()}`;
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
    subject: () => subjectPage(view, arg || "", params),
    enroll: () => enrollPage(view, params),
    identify: () => identifyPage(view),
    verify: () => verifyPage(view, params),
    status: () => statusPage(view),
  };
  const name = pages[page] ? page : home();
  const scope = PAGE_SCOPES[name];
  if (scope && !can(scope)) {
    const title = name[0].toUpperCase() + name.slice(1);
    view.append(h("h1", {}, title), needs(scope, `The ${title} page`));
    return;
  }
  pages[name]();
}

signOut.addEventListener("click", () => {
  setKey(null);
  setSession(null);
  render();
});
window.addEventListener("hashchange", render);
// A click on the page already shown starts it afresh (no hashchange fires then).
document.querySelector("header").addEventListener("click", (event) => {
  const link = event.target.closest("a[href^='#']");
  if (link && link.getAttribute("href") === location.hash) render();
});
render().catch((err) => view.replaceChildren(h("p", { class: "message error" }, String(err))));
