// Enroll: photos from files or the webcam; each is previewed with its detected faces
// (POST /embed stores nothing) before one POST /enroll sends them all as `images`; then each
// photo shows its outcome (enrolled, no face, several faces, poor quality...).
import { ApiError, post } from "../api.js";
import { cameraControl } from "../camera.js";
import { boxedPhoto, errorText, fixed, h, message, photoInput, track } from "../dom.js";

const REASONS = {
  no_face: "no face found",
  multiple_faces: "several faces (send a photo with one face, or enroll the main face)",
  poor_quality: "poor quality",
  duplicate_face: "already enrolled as another subject",
  not_a_face: "not a face",
};

function outcomeText(outcome) {
  if (outcome.status === "enrolled") {
    const dup = outcome.possible_duplicate;
    return dup ? `enrolled (looks like “${dup.subject_id}”, similarity ${fixed(dup.similarity)})`
      : "enrolled";
  }
  if (outcome.status === "already_enrolled") return "already enrolled (same photo)";
  const code = outcome.error && outcome.error.code;
  const reason = REASONS[code] || (outcome.error ? outcome.error.message : "rejected");
  const detail = code === "poor_quality" && outcome.error.message
    ? `: ${outcome.error.message}` : "";
  return `not enrolled: ${reason}${detail}`;
}

export function enrollPage(view, params) {
  const photos = []; // {file, card, outcome}
  const list = h("div", { class: "photos", id: "enroll-photos" });
  const status = h("div", { id: "enroll-status" });
  const subject = h("input", { type: "text", id: "subject-id", name: "subject_id",
    maxlength: 128, required: true, value: params.get("subject") || "" });
  const metadata = h("textarea", { id: "metadata", rows: 2, placeholder: '{"team": "front desk"}' });
  const several = h("select", { id: "on-multiple" },
    h("option", { value: "reject" }, "Refuse photos with several faces"),
    h("option", { value: "primary" }, "Enroll the main face of a group photo"));

  async function add(file) {
    const url = track(URL.createObjectURL(file));
    const outcome = h("p", { class: "outcome muted" }, "Detecting faces…");
    const figure = h("div", { class: "preview" });
    const remove = h("button", { type: "button", class: "secondary small", onclick: () => {
      photos.splice(photos.findIndex((p) => p.file === file), 1);
      card.remove();
    } }, "Remove");
    const card = h("div", { class: "card photo" }, figure, h("div", { class: "name" }, file.name),
      outcome, remove);
    photos.push({ file, card, outcome });
    list.append(card);
    const form = new FormData();
    form.append("image", file);
    form.append("max_faces", "20");
    try {
      const found = await post("/embed", form);
      const n = found.faces.length;
      figure.replaceChildren(boxedPhoto(url, found.faces.map((face, i) => ({
        bbox: face.bbox, label: n > 1 ? `${i + 1}` : face.quality.verdict, kind: "detected",
      }))));
      outcome.textContent = n === 0 ? "No face found in this photo."
        : n === 1 ? `1 face, quality ${found.faces[0].quality.verdict}.`
          : `${n} faces.`;
      card.dataset.faces = String(n);
    } catch (err) {
      figure.replaceChildren(boxedPhoto(url, []));
      outcome.textContent = err instanceof ApiError && err.status === 403
        ? "(Previewing faces needs a key with scope recognize.)" : `Preview failed: ${errorText(err)}`;
      card.dataset.faces = "?";
    }
  }

  async function enroll(event) {
    event.preventDefault();
    if (!photos.length) {
      status.replaceChildren(message("error", "Add at least one photo."));
      return;
    }
    const form = new FormData();
    form.append("subject_id", subject.value);
    if (metadata.value.trim()) form.append("metadata", metadata.value.trim());
    form.append("on_multiple", several.value);
    for (const { file } of photos) form.append("images", file);
    status.replaceChildren(message("info", "Enrolling…"));
    let outcomes;
    try {
      const result = await post("/enroll", form);
      outcomes = result.images;
      status.replaceChildren(message("ok", `“${result.subject_id}”: ${result.enrolled} of `
        + `${photos.length} photo${photos.length === 1 ? "" : "s"} enrolled.`
        + (result.metadata_status === "kept" ? " The subject already existed: its metadata "
          + "was kept, not replaced by the one given here." : "")));
    } catch (err) {
      outcomes = Array.isArray(err.details) && err.details.every((d) => "status" in d)
        ? err.details : null;
      status.replaceChildren(message("error", `Nothing enrolled: ${errorText(err)}`));
    }
    for (const outcome of outcomes || []) {
      const photo = photos[outcome.index];
      if (!photo) continue;
      photo.outcome.textContent = outcomeText(outcome);
      photo.outcome.className = `outcome ${outcome.status === "rejected" ? "fail" : "pass"}`;
      photo.card.dataset.outcome = outcome.status;
    }
  }

  view.append(h("h1", {}, "Enroll"),
    h("form", { class: "card", id: "enroll-form", onsubmit: enroll },
      h("label", { for: "subject-id" }, "Subject id"), subject,
      h("label", { for: "metadata" }, "Metadata (JSON, optional)"), metadata,
      h("label", { for: "on-multiple" }, "Photos with several faces"), several,
      h("label", {}, "Photos"),
      h("div", { class: "actions" },
        photoInput((files) => files.forEach(add), { multiple: true, name: "enroll-photos" }),
        cameraControl(add)),
      list,
      h("div", { class: "actions" }, h("button", { type: "submit", id: "enroll-submit" },
        "Enroll these photos")),
      status));
}
