// Enroll: photos from files or the webcam; each is previewed with its detected faces
// (POST /embed stores nothing) before one POST /enroll sends them all as `images`; then each
// photo shows its outcome (enrolled, no face, several faces, poor quality...). In a photo of
// several faces the user may click the one to enroll: that photo then goes in a request of
// its own, as `image` with `face: {"index": n}` (the position in /embed's list, which
// /enroll's detection gives in the same order).
import { ApiError, post } from "../api.js";
import { cameraControl } from "../camera.js";
import { boxedPhoto, errorText, fixed, h, message, photoInput, track } from "../dom.js";

const REASONS = {
  no_face: "no face found",
  multiple_faces: "several faces (send a photo with one face, or enroll the main face)",
  poor_quality: "poor quality",
  duplicate_face: "already enrolled as another subject",
  not_a_face: "not a face",
  face_not_detected: "the chosen face was not found again",
};

// POST /enroll's metadata_status, in words.
const METADATA = {
  set: "Metadata stored with the new subject.",
  replaced: "The subject's metadata was replaced by the one given here.",
  unchanged: "The metadata given is the one already stored.",
  kept: "The subject already existed: its metadata was kept, not replaced by the one given "
    + "here (tick “Replace the subject's existing metadata” to replace it).",
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
  const replace = h("input", { type: "checkbox", id: "replace-metadata" });
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
    const photo = { file, card, outcome, face: null };
    photos.push(photo);
    list.append(card);
    const form = new FormData();
    form.append("image", file);
    form.append("max_faces", "20");
    try {
      const found = await post("/embed", form);
      const n = found.faces.length;
      const several = `${n} faces: click the one to enroll (else the main face is taken, or `
        + "the photo refused, as chosen above).";
      // A click picks that face (another click on it gives the choice back to the server).
      const pick = (index, box) => {
        for (const other of figure.querySelectorAll(".box.chosen")) other.classList.remove("chosen");
        photo.face = photo.face === index ? null : index;
        if (photo.face !== null) box.classList.add("chosen");
        card.dataset.chosen = photo.face === null ? "" : String(photo.face);
        outcome.textContent = photo.face === null ? several
          : `Face ${index + 1} of ${n} will be enrolled from this photo.`;
      };
      figure.replaceChildren(boxedPhoto(url, found.faces.map((face, i) => ({
        bbox: face.bbox, label: n > 1 ? `${i + 1}` : face.quality.verdict, kind: "detected",
      })), file.name, n > 1 ? { onPick: pick } : {}));
      outcome.textContent = n === 0 ? "No face found in this photo."
        : n === 1 ? `1 face, quality ${found.faces[0].quality.verdict}.` : several;
      card.dataset.faces = String(n);
    } catch (err) {
      figure.replaceChildren(boxedPhoto(url, []));
      outcome.textContent = err instanceof ApiError && err.status === 403
        ? "(Previewing faces, and choosing one of a group photo, needs a key with scope "
          + "recognize.)" : `Preview failed: ${errorText(err)}`;
      card.dataset.faces = "?";
    }
  }

  function baseForm() {
    const form = new FormData();
    form.append("subject_id", subject.value);
    if (metadata.value.trim()) form.append("metadata", metadata.value.trim());
    if (replace.checked) form.append("replace_metadata", "true");
    return form;
  }

  // Photos left to the server's rule: one request, `images`; outcomes by index, as sent.
  async function enrollBatch(batch) {
    const form = baseForm();
    form.append("on_multiple", several.value);
    for (const { file } of batch) form.append("images", file);
    try {
      const result = await post("/enroll", form);
      return { result, outcomes: result.images.map((o) => ({ ...o, photo: batch[o.index] })) };
    } catch (err) {
      const outcomes = Array.isArray(err.details) && err.details.every((d) => "status" in d)
        ? err.details.map((o) => ({ ...o, photo: batch[o.index] }))
        : batch.map((photo) => ({ photo, status: "rejected",
          error: { code: err.code, message: err.message } }));
      return { error: err, outcomes };
    }
  }

  // A photo with a chosen face: `image` and `face` (which goes with one image only).
  async function enrollChosen(photo) {
    const form = baseForm();
    form.append("image", photo.file);
    form.append("face", JSON.stringify({ index: photo.face }));
    try {
      const result = await post("/enroll", form);
      return { result: { ...result, enrolled: 1 }, outcomes: [{ photo,
        status: result.created ? "enrolled" : "already_enrolled",
        possible_duplicate: result.possible_duplicate }] };
    } catch (err) {
      return { error: err, outcomes: [{ photo, status: "rejected",
        error: { code: err.code, message: err.message } }] };
    }
  }

  async function enroll(event) {
    event.preventDefault();
    if (!photos.length) {
      status.replaceChildren(message("error", "Add at least one photo."));
      return;
    }
    status.replaceChildren(message("info", "Enrolling…"));
    const batch = photos.filter((p) => p.face === null);
    const answers = [];
    if (batch.length) answers.push(await enrollBatch(batch));
    for (const photo of photos.filter((p) => p.face !== null)) {
      answers.push(await enrollChosen(photo));
    }
    const done = answers.filter((a) => a.result);
    const enrolled = done.reduce((n, a) => n + a.result.enrolled, 0);
    const noun = `photo${photos.length === 1 ? "" : "s"}`;
    // What became of the subject's metadata: "kept" (a request did not replace it) matters
    // most, else the first request's word (it created or replaced it; later ones agree).
    const statuses = done.map((a) => a.result.metadata_status).filter(Boolean);
    const metadataStatus = statuses.includes("kept") ? "kept" : statuses[0];
    if (done.length) {
      status.replaceChildren(message("ok", `“${done[0].result.subject_id}”: ${enrolled} of `
        + `${photos.length} ${noun} enrolled.`,
      metadataStatus ? h("span", { class: "metadata-status", dataset: { status: metadataStatus } },
        ` ${METADATA[metadataStatus] || metadataStatus}`) : null));
    } else {
      status.replaceChildren(message("error", `Nothing enrolled: ${errorText(answers[0].error)}`));
    }
    for (const answer of answers) {
      for (const outcome of answer.outcomes) {
        const photo = outcome.photo;
        if (!photo) continue;
        photo.outcome.textContent = outcomeText(outcome);
        photo.outcome.className = `outcome ${outcome.status === "rejected" ? "fail" : "pass"}`;
        photo.card.dataset.outcome = outcome.status;
      }
    }
  }

  view.append(h("h1", {}, "Enroll"),
    h("form", { class: "card", id: "enroll-form", onsubmit: enroll },
      h("label", { for: "subject-id" }, "Subject id"), subject,
      h("label", { for: "metadata" }, "Metadata (JSON, optional)"), metadata,
      h("label", { class: "inline check" }, replace,
        "Replace the subject's existing metadata (else an existing subject keeps its own)"),
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
