// Identify: every face of a photo boxed and named (or "unknown"), each face's candidates as
// similarity bars against the threshold, and the operating point the decision used. A key
// that may also read the gallery asks for the subjects' metadata (include_metadata) and shows
// their display names (metadata `name`, `display_name` or `displayName`) beside the ids. A
// key that may enroll marks a named face "not this person" (POST /negatives with the face's
// embedding, asked for with return_embedding); one that may also erase can undo it.
import { del, post } from "../api.js";
import { cameraControl } from "../camera.js";
import {
  boxedPhoto, errorText, fixed, h, message, operatingPoint, photoInput, similarityBar, track,
} from "../dom.js";
import { can, gate, needsText } from "../session.js";

const NAME_KEYS = ["name", "display_name", "displayName"];

// A candidate's display name from its metadata, if the answer carried one.
function displayName(candidate) {
  const metadata = candidate && candidate.metadata;
  if (!metadata) return null;
  const key = NAME_KEYS.find((k) => typeof metadata[k] === "string" && metadata[k].trim());
  return key ? metadata[key].trim() : null;
}

// The match as listed among the candidates (where the metadata is, whichever carries it).
const matchOf = (face) => face.match && (face.candidates.find(
  (c) => c.subject_id === face.match.subject_id && c.metadata) || face.match);

// "Barack Obama (obama)", or the id alone.
function named(candidate) {
  const name = displayName(candidate);
  return name && name !== candidate.subject_id ? `${name} (${candidate.subject_id})`
    : candidate.subject_id;
}

function faceResult(face, number, threshold) {
  const name = face.match ? named(matchOf(face)) : "unknown";
  const rows = face.candidates.map((c) => h("li", { class: "candidate" },
    h("a", { class: "subject-id", href: `#/subject/${encodeURIComponent(c.subject_id)}` },
      named(c), c.suppressed_by ? h("span", { class: "muted suppressed" },
        " (marked not this person)") : null),
    similarityBar(c.similarity, threshold),
    h("span", { class: "score" }, fixed(c.similarity))));
  return h("div", { class: "card face-result", dataset: { face: String(number) } },
    h("h3", {}, `Face ${number}: `, h("span", { class: face.match ? "name" : "name unknown" },
      name)),
    h("p", { class: "muted" }, `quality ${face.quality.verdict}, detection `
      + fixed(face.detection_confidence, 2)),
    rows.length ? h("ol", { class: "candidates" }, rows)
      : h("p", { class: "muted" }, "No candidates (empty gallery)."),
    face.match ? notThisPerson(face, number) : null);
}

// "Not this person": the face's embedding kept as a negative example of the subject it was
// given to, so identify refuses that subject for it (and for faces nearer it than to the
// subject's own photos). Undone by deleting the negative.
function notThisPerson(face, number) {
  const subjectId = face.match.subject_id;
  const status = h("div", { class: "negative-status" });
  const mark = gate(h("button", { type: "button", class: "secondary small not-this-person",
    onclick: async () => {
      mark.disabled = true;
      try {
        const negative = await post("/negatives", { subject_id: subjectId,
          embedding: face.embedding_b64 });
        const undo = gate(h("button", { type: "button", class: "secondary small undo-negative",
          onclick: async () => {
            try {
              await del(`/negatives/${encodeURIComponent(negative.negative_id)}`);
              status.replaceChildren(message("ok", `Undone: face ${number} may be matched to `
                + `“${subjectId}” again.`));
              mark.disabled = false;
            } catch (err) {
              status.replaceChildren(message("error", errorText(err)));
            }
          } }, "Undo"), "erase", "Undoing a “not this person” mark");
        status.replaceChildren(message("ok", `Face ${number} is marked as not “${subjectId}”: `
          + "identify will no longer give this face, or faces more like it than like "
          + `${subjectId}'s photos, to ${subjectId}. `, undo));
      } catch (err) {
        mark.disabled = false;
        status.replaceChildren(message("error", errorText(err)));
      }
    } }, "Not this person"), "enroll", "Marking a face “not this person”");
  if (!face.embedding_b64) mark.disabled = true;
  return h("div", { class: "actions" }, mark, status);
}

export function identifyPage(view) {
  const result = h("div", { id: "identify-result" });

  async function identify(file) {
    const url = track(URL.createObjectURL(file));
    result.replaceChildren(message("info", `Identifying ${file.name}…`));
    const form = new FormData();
    form.append("image", file);
    form.append("k", "5");
    if (can("read")) form.append("include_metadata", "true");
    if (can("enroll")) form.append("return_embedding", "true"); // for "not this person"
    let body;
    try {
      body = await post("/identify", form);
    } catch (err) {
      result.replaceChildren(boxedPhoto(url, []), message("error", errorText(err)));
      return;
    }
    const boxes = body.faces.map((face, i) => ({
      bbox: face.bbox,
      label: `${i + 1}: ${face.match ? displayName(matchOf(face)) || face.match.subject_id
        : "unknown"}`,
      kind: face.match ? "known" : "unknown",
    }));
    result.replaceChildren(
      h("div", { class: "split" },
        h("div", {}, boxedPhoto(url, boxes, file.name),
          h("p", { class: "muted" }, `${body.faces_detected} face`
            + `${body.faces_detected === 1 ? "" : "s"} found · model ${body.model}`),
          operatingPoint(body.operating_point)),
        h("div", { class: "faces" },
          body.faces.length ? body.faces.map((f, i) => faceResult(f, i + 1, body.threshold))
            : message("info", "No face found in this photo."))));
    result.dataset.done = "true";
  }

  view.append(h("h1", {}, "Identify"),
    h("div", { class: "card" },
      h("p", {}, "Who is in this photo? Each face is searched for in the gallery; a face "
        + "matches a subject at or above the threshold (the mark on each bar)."),
      can("read") ? null : h("p", { class: "muted needs-scope" }, needsText("read",
        "Showing display names from the subjects' metadata")),
      h("div", { class: "actions" },
        photoInput((files) => identify(files[0]), { name: "identify-photo" }),
        cameraControl(identify))),
    result);
}
