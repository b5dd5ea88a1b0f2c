// One subject: its metadata and its faces, page by page (GET /subjects/{id}/faces); rename it
// (a taken id offers a merge instead), edit its metadata, merge it into another subject after
// a confirmation naming both, delete a face or erase the subject, or add photos (enroll).
import { chipUrl, del, get, patch, post, subjectPath } from "../api.js";
import { append, confirmAction, errorText, fixed, h, message, track, when } from "../dom.js";
import { can, gate, needs } from "../session.js";

const PAGE = 24; // faces per page; `#/subject/<id>?per_page=n` asks for another size

function faceCard(face, onDelete) {
  const holder = h("div", { class: "thumb" }, h("span", { class: "muted" }, "…"));
  chipUrl(face.face_id).then(
    (url) => holder.replaceChildren(h("img", { src: track(url), alt: "face chip" })),
    () => holder.replaceChildren(h("span", { class: "muted" }, "no chip stored")),
  );
  return h("div", { class: "card face", dataset: { faceId: face.face_id } },
    holder,
    h("div", { class: "muted" }, `detection ${fixed(face.detection_confidence, 2)}`),
    h("div", { class: "muted" }, when(face.created_at)),
    h("div", { class: "face-id muted" }, face.face_id),
    gate(h("button", { type: "button", class: "danger small delete-face",
      onclick: () => onDelete(face) }, "Delete face"), "erase", "Deleting a face"));
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// Leaves this page for another (the gallery, or the subject under its new id) with a notice.
function leave(hash, notice) {
  sessionStorage.setItem("faceserve.notice", notice);
  location.hash = hash;
}
const subjectHash = (id) => `#/subject/${encodeURIComponent(id)}`;

export async function subjectPage(view, subjectId, params = new URLSearchParams()) {
  const perPage = Math.min(1000, Math.max(1, Number.parseInt(params.get("per_page"), 10)
    || PAGE));
  const status = h("div", { id: "subject-status" });
  view.append(h("p", {}, h("a", { href: "#/gallery" }, "← Gallery")), status);
  let subject;
  try {
    subject = await get(subjectPath(subjectId));
  } catch (err) {
    status.replaceChildren(message("error", err.status === 404
      ? `No subject has the id “${subjectId}” (it may have been erased).` : errorText(err)));
    return;
  }
  let total = subject.face_count;
  const faces = h("div", { class: "grid", id: "faces" });
  const count = h("span", { id: "face-count" });
  const showCount = () => { count.textContent = plural(total, "face"); };

  // ------------------------------------------------------------ faces, page by page
  const cursors = [null];
  let page = 0;
  const prev = h("button", { type: "button", class: "secondary", id: "faces-prev",
    disabled: true, onclick: () => { page -= 1; loadFaces(); } }, "← Previous");
  const next = h("button", { type: "button", class: "secondary", id: "faces-next",
    disabled: true, onclick: () => { page += 1; loadFaces(); } }, "Next →");
  const pageLabel = h("span", { class: "muted", id: "faces-page" });

  async function loadFaces() {
    try {
      const body = await get(`${subjectPath(subject.subject_id)}/faces`,
        { query: { limit: perPage, cursor: cursors[page] } });
      cursors[page + 1] = body.next_cursor;
      faces.replaceChildren(...body.faces.map((face) => faceCard(face, deleteFace)));
      prev.disabled = page === 0;
      next.disabled = !body.next_cursor;
      pageLabel.textContent = `page ${page + 1} of ${Math.max(1, Math.ceil(total / perPage))}`;
      faces.dataset.page = String(page + 1);
    } catch (err) {
      status.replaceChildren(message("error", errorText(err)));
    }
  }

  async function deleteFace(face) {
    const last = total === 1;
    const ok = await confirmAction(
      `Delete face ${face.face_id} of “${subject.subject_id}”? Its template and chip are `
      + "erased for good."
      + (last ? " It is the subject's last face: the subject and its metadata go with it." : ""),
      "Delete face");
    if (!ok) return;
    try {
      const result = await del(`/faces/${encodeURIComponent(face.face_id)}`);
      if (result.subject_deleted) {
        // A subject never stays without faces: the server erased it with its last face.
        leave("#/gallery", `Face ${face.face_id} deleted; it was the last, so subject `
          + `“${result.subject_id}” was erased with it.`);
        return;
      }
      total -= 1;
      showCount();
      // The page refilled from the server: the next page's first face moves up.
      if (faces.children.length === 1 && page > 0) page -= 1;
      await loadFaces();
      status.replaceChildren(message("ok", `Face ${face.face_id} deleted.`));
    } catch (err) {
      status.replaceChildren(message("error", errorText(err)));
    }
  }

  async function deleteSubject() {
    const ok = await confirmAction(
      `Erase subject “${subject.subject_id}” and ${total === 1 ? "its only face"
        : `all ${total} of its faces`}? `
      + "This cannot be undone; the audit log keeps only who erased which id, and when.",
      "Erase subject");
    if (!ok) return;
    try {
      const result = await del(subjectPath(subject.subject_id));
      leave("#/gallery", `Subject “${result.subject_id}” erased (`
        + `${plural(result.faces_deleted, "face")}).`);
    } catch (err) {
      status.replaceChildren(message("error", errorText(err)));
    }
  }

  // ------------------------------------------------------------ merge
  async function merge(into) {
    const ok = await confirmAction(
      `Merge “${subject.subject_id}” into “${into}”? Its ${plural(total, "face")} move to `
      + `“${into}”, which keeps its id and metadata; “${subject.subject_id}” and its metadata `
      + "are removed. A photo both already hold is kept once.",
      "Merge");
    if (!ok) return;
    try {
      const result = await post(`${subjectPath(subject.subject_id)}/merge`, { into });
      leave(subjectHash(result.subject_id), `“${result.merged_subject_id}” merged into `
        + `“${result.subject_id}”: ${plural(result.faces_moved, "face")} moved`
        + (result.faces_dropped ? `, ${result.faces_dropped} already there` : "")
        + `; it now has ${plural(result.face_count, "face")}.`);
    } catch (err) {
      status.replaceChildren(message("error", err.code === "target_not_found"
        ? `No subject has the id “${into}”: nothing was merged.` : errorText(err)));
    }
  }

  const mergeInto = h("input", { type: "text", id: "merge-into", maxlength: 128, required: true,
    placeholder: "the other subject's id", "aria-label": "Merge into subject" });
  const mergeForm = h("form", { class: "actions", id: "merge-form", onsubmit: (event) => {
    event.preventDefault();
    if (mergeInto.value) merge(mergeInto.value);
  } }, mergeInto, h("button", { type: "submit", class: "secondary" }, "Merge into…"));

  // ------------------------------------------------------------ rename
  const newId = h("input", { type: "text", id: "rename-to", maxlength: 128, required: true,
    value: subject.subject_id, "aria-label": "New subject id" });
  const renameStatus = h("div", { id: "rename-status" });
  async function rename(event) {
    event.preventDefault();
    const target = newId.value;
    if (!target || target === subject.subject_id) return;
    try {
      const result = await patch(subjectPath(subject.subject_id), { subject_id: target });
      leave(subjectHash(result.subject_id), `“${result.renamed_from}” renamed to `
        + `“${result.subject_id}” (${plural(result.faces_moved, "face")} moved).`);
    } catch (err) {
      if (err.code === "subject_exists") {
        // Two ids of one person: the way to combine them is a merge, offered at once.
        renameStatus.replaceChildren(message("error",
          `“${target}” is already a subject: a rename needs a free id. If both are the same `
          + "person, merge this subject into it instead. ",
          h("button", { type: "button", class: "secondary small", id: "offer-merge",
            onclick: () => merge(target) }, `Merge into “${target}”…`)));
      } else {
        renameStatus.replaceChildren(message("error", errorText(err)));
      }
    }
  }

  // ------------------------------------------------------------ metadata
  const metadataText = h("textarea", { id: "metadata-edit", rows: 4,
    "aria-label": "Metadata (JSON object)" });
  metadataText.value = JSON.stringify(subject.metadata || {}, null, 2);
  const metadataShown = h("pre", { class: "metadata", id: "metadata-shown" });
  const showMetadata = () => {
    metadataShown.textContent = Object.keys(subject.metadata || {}).length
      ? JSON.stringify(subject.metadata, null, 2) : "(no metadata)";
  };
  const metadataStatus = h("div", { id: "metadata-status" });
  async function saveMetadata(event) {
    event.preventDefault();
    let value;
    try {
      value = JSON.parse(metadataText.value.trim() || "{}");
    } catch (err) {
      metadataStatus.replaceChildren(message("error", `Not JSON: ${err.message}`));
      return;
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      metadataStatus.replaceChildren(message("error", "Metadata is a JSON object: {…}."));
      return;
    }
    try {
      const result = await patch(subjectPath(subject.subject_id), { metadata: value });
      subject.metadata = result.metadata;
      showMetadata();
      metadataStatus.replaceChildren(message("ok", "Metadata saved (the old value replaced "
        + "as a whole)."));
    } catch (err) {
      metadataStatus.replaceChildren(message("error", errorText(err)));
    }
  }

  showCount();
  showMetadata();
  const editing = can("enroll")
    ? h("details", { class: "card", id: "edit-subject" },
      h("summary", {}, "Rename, edit metadata, merge"),
      h("form", { class: "actions", id: "rename-form", onsubmit: rename },
        h("label", { for: "rename-to" }, "Rename to"), newId,
        h("button", { type: "submit", class: "secondary" }, "Rename")),
      renameStatus,
      h("form", { id: "metadata-form", onsubmit: saveMetadata },
        h("label", { for: "metadata-edit" }, "Metadata (JSON object; replaces the stored one)"),
        metadataText,
        h("div", { class: "actions" }, h("button", { type: "submit", class: "secondary" },
          "Save metadata"))),
      metadataStatus,
      h("label", { for: "merge-into" }, "Merge into another subject (same person)"),
      mergeForm)
    : needs("enroll", "Renaming, editing metadata and merging");
  append(view, [
    h("div", { class: "toolbar" },
      h("h1", { class: "subject-id" }, subject.subject_id),
      can("enroll") ? h("a", { class: "button secondary",
        href: `#/enroll?subject=${encodeURIComponent(subject.subject_id)}` }, "Add photos")
        : null,
      gate(h("button", { type: "button", class: "danger", id: "delete-subject",
        onclick: deleteSubject }, "Erase subject"), "erase", "Erasing a subject")),
    h("p", { class: "muted" }, count, " · enrolled ", when(subject.created_at)),
    metadataShown,
    editing,
    can("erase") ? null : needs("erase", "Deleting faces and erasing the subject"),
    faces,
    h("div", { class: "pager" }, prev, pageLabel, next)]);
  await loadFaces();
}
