// Gallery: subjects page by page (GET /subjects and its cursor), a thumbnail each (the first
// face's stored chip), and a search by exact subject id.
import { ApiError, chipUrl, get, subjectPath } from "../api.js";
import { errorText, h, message, track, when } from "../dom.js";

const PAGE = 24;

function thumbnail(subjectId) {
  const holder = h("div", { class: "thumb" }, h("span", { class: "muted" }, "…"));
  (async () => {
    try {
      const detail = await get(subjectPath(subjectId));
      const face = detail.faces[0];
      if (!face) {
        holder.replaceChildren(h("span", { class: "muted" }, "no face"));
        return;
      }
      const url = track(await chipUrl(face.face_id));
      holder.replaceChildren(h("img", { src: url, alt: "face" }));
    } catch {
      holder.replaceChildren(h("span", { class: "muted" }, "no chip"));
    }
  })();
  return holder;
}

function card(subject) {
  const meta = Object.keys(subject.metadata || {}).length
    ? h("div", { class: "metadata" }, JSON.stringify(subject.metadata)) : null;
  return h("a", { class: "card subject", href: `#/subject/${encodeURIComponent(subject.subject_id)}`,
    dataset: { subjectId: subject.subject_id } },
  thumbnail(subject.subject_id),
  h("div", { class: "subject-id" }, subject.subject_id),
  h("div", { class: "muted" }, `${subject.face_count} face${subject.face_count === 1 ? "" : "s"}`,
    " · ", when(subject.created_at)),
  meta);
}

export function galleryPage(view) {
  const cursors = [null]; // cursor of each page shown so far
  let page = 0;
  const grid = h("div", { class: "grid", id: "subjects" });
  const status = h("div");
  const prev = h("button", { type: "button", class: "secondary", disabled: true,
    onclick: () => { page -= 1; load(); } }, "← Previous");
  const next = h("button", { type: "button", class: "secondary", disabled: true,
    onclick: () => { page += 1; load(); } }, "Next →");
  const pageLabel = h("span", { class: "muted" });
  const search = h("input", { type: "search", id: "subject-search",
    placeholder: "subject id", "aria-label": "Find a subject by id" });

  async function load() {
    status.replaceChildren(message("info", "Loading…"));
    try {
      const body = await get("/subjects", { query: { limit: PAGE, cursor: cursors[page] } });
      cursors[page + 1] = body.next_cursor;
      grid.replaceChildren(...body.subjects.map(card));
      status.replaceChildren(body.subjects.length || page
        ? "" : message("info", "The gallery is empty: enroll someone first."));
      prev.disabled = page === 0;
      next.disabled = !body.next_cursor;
      pageLabel.textContent = `page ${page + 1}`;
    } catch (err) {
      status.replaceChildren(message("error", errorText(err)));
    }
  }

  async function find(event) {
    event.preventDefault();
    const id = search.value;
    if (!id) {
      page = 0;
      load();
      return;
    }
    try {
      const subject = await get(subjectPath(id));
      grid.replaceChildren(card(subject));
      status.replaceChildren("");
      prev.disabled = next.disabled = true;
      pageLabel.textContent = "search result";
    } catch (err) {
      grid.replaceChildren();
      const text = err instanceof ApiError && err.status === 404
        ? `No subject has the id “${id}”.` : errorText(err);
      status.replaceChildren(message("error", text));
    }
  }

  view.append(
    h("div", { class: "toolbar" },
      h("h1", {}, "Gallery"),
      h("form", { class: "search", onsubmit: find }, search,
        h("button", { type: "submit", class: "secondary" }, "Find")),
      h("a", { class: "button", href: "#/enroll" }, "Enroll")),
    status, grid,
    h("div", { class: "pager" }, prev, pageLabel, next));
  load();
}
