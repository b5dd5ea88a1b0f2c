// Identify: every face of a photo boxed and named (or "unknown"), each face's candidates as
// similarity bars against the threshold, and the operating point the decision used.
import { post } from "../api.js";
import { cameraControl } from "../camera.js";
import {
  boxedPhoto, errorText, fixed, h, message, operatingPoint, photoInput, similarityBar, track,
} from "../dom.js";

function faceResult(face, number, threshold) {
  const name = face.match ? face.match.subject_id : "unknown";
  const rows = face.candidates.map((c) => h("li", { class: "candidate" },
    h("a", { class: "subject-id", href: `#/subject/${encodeURIComponent(c.subject_id)}` },
      c.subject_id),
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
    let body;
    try {
      body = await post("/identify", form);
    } catch (err) {
      result.replaceChildren(boxedPhoto(url, []), message("error", errorText(err)));
      return;
    }
    const boxes = body.faces.map((face, i) => ({
      bbox: face.bbox,
      label: `${i + 1}: ${face.match ? face.match.subject_id : "unknown"}`,
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
      h("div", { class: "actions" },
        photoInput((files) => identify(files[0]), { name: "identify-photo" }),
        cameraControl(identify))),
    result);
}
