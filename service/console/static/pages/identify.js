// Identify: every face of a photo boxed and named (or "unknown"), each face's candidates as
// similarity bars against the threshold, and the operating point the decision used. A key
// that may also read the gallery asks for the subjects' metadata (include_metadata) and shows
// their display names (metadata `name`, `display_name` or `displayName`) beside the ids.
import { post } from "../api.js";
import { cameraControl } from "../camera.js";
import {
  boxedPhoto, errorText, fixed, h, message, operatingPoint, photoInput, similarityBar, track,
} from "../dom.js";
import { can, needsText } from "../session.js";

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
      named(c)),
    similarityBar(c.similarity, threshold),
    h("span", { class: "score" }, fixed(c.similarity))));
  return h("div", { class: "card face-result", dataset: { face: String(number) } },
    h("h3", {}, `Face ${number}: `, h("span", { class: face.match ? "name" : "name unknown" },
      name)),
    h("p", { class: "muted" }, `quality ${face.quality.verdict}, detection `
      + fixed(face.detection_confidence, 2)),
    rows.length ? h("ol", { class: "candidates" }, rows)
      : h("p", { class: "muted" }, "No candidates (empty gallery)."));
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
