// One subject: metadata and every face (chip, detection confidence, date); delete a face,
// erase the subject after a confirmation naming it, or add photos (the enroll page).
import { chipUrl, del, get, subjectPath } from "../api.js";
import { append, confirmAction, errorText, fixed, h, message, track, when } from "../dom.js";

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
    h("button", { type: "button", class: "danger small", onclick: () => onDelete(face) },
      "Delete face"));
}

export async function subjectPage(view, subjectId) {
  const status = h("div");
  view.append(h("p", {}, h("a", { href: "#/gallery" }, "← Gallery")), status);
  let subject;
  try {
    subject = await get(subjectPath(subjectId));
  } catch (err) {
    status.replaceChildren(message("error", err.status === 404
      ? `No subject has the id “${subjectId}” (it may have been erased).` : errorText(err)));
    return;
  }
  const faces = h("div", { class: "grid", id: "faces" });
  const count = h("span");
  const showCount = () => {
    const n = faces.children.length;
    count.textContent = `${n} face${n === 1 ? "" : "s"}`;
  };

  async function deleteFace(face) {
    const last = faces.children.length === 1;
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
        sessionStorage.setItem("faceserve.notice",
          `Face ${face.face_id} deleted; it was the last, so subject “${result.subject_id}” `
          + "was erased with it.");
        location.hash = "#/gallery";
        return;
      }
      faces.querySelector(`[data-face-id="${CSS.escape(face.face_id)}"]`)?.remove();
      showCount();
      status.replaceChildren(message("ok", `Face ${face.face_id} deleted.`));
    } catch (err) {
      status.replaceChildren(message("error", errorText(err)));
    }
  }

  async function deleteSubject() {
    const n = faces.children.length;
    const ok = await confirmAction(
      `Erase subject “${subject.subject_id}” and ${n === 1 ? "its only face"
        : `all ${n} of its faces`}? `
      + "This cannot be undone; the audit log keeps only who erased which id, and when.",
      "Erase subject");
    if (!ok) return;
    try {
      const result = await del(subjectPath(subject.subject_id));
      sessionStorage.setItem("faceserve.notice",
        `Subject “${result.subject_id}” erased (${result.faces_deleted} `
        + `face${result.faces_deleted === 1 ? "" : "s"}).`);
      location.hash = "#/gallery";
    } catch (err) {
      status.replaceChildren(message("error", errorText(err)));
    }
  }

  faces.append(...subject.faces.map((face) => faceCard(face, deleteFace)));
  showCount();
  const metadata = Object.keys(subject.metadata || {}).length
    ? h("pre", { class: "metadata" }, JSON.stringify(subject.metadata, null, 2)) : null;
  append(view, [
    h("div", { class: "toolbar" },
      h("h1", { class: "subject-id" }, subject.subject_id),
      h("a", { class: "button secondary",
        href: `#/enroll?subject=${encodeURIComponent(subject.subject_id)}` }, "Add photos"),
      h("button", { type: "button", class: "danger", id: "delete-subject",
        onclick: deleteSubject }, "Erase subject")),
    h("p", { class: "muted" }, count, " · enrolled ", when(subject.created_at)),
    metadata,
    faces]);
}
