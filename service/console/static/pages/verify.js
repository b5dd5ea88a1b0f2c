// Verify: two photos, or a photo and an enrolled subject; the decision and the similarity
// against the threshold. `on_multiple` says which face of a photo with several is compared.
import { post } from "../api.js";
import { boxedPhoto, errorText, fixed, h, message, operatingPoint, photoInput, similarityBar,
  track } from "../dom.js";

// Which face of each uploaded photo was compared, and why (its face_selection).
function facesUsed(body) {
  const lines = (body.faces || []).map((face) => face.face_selection)
    .filter((selection) => selection && selection.faces_detected > 1)
    .map((selection) => `${selection.faces_detected} faces in the photo: ${selection.reason}`);
  return lines.length ? h("p", { class: "muted face-selection" }, lines.join("; ")) : null;
}

export function verifyPage(view, params) {
  const picked = { a: null, b: null };
  const result = h("div", { id: "verify-result" });
  const slotA = h("div", { class: "preview" });
  const slotB = h("div", { class: "preview" });
  const subject = h("input", { type: "text", id: "verify-subject", maxlength: 128,
    value: params.get("subject") || "", placeholder: "or an enrolled subject id" });

  const several = h("select", { id: "verify-on-multiple", name: "on_multiple" },
    h("option", { value: "primary" }, "Compare the main face (the largest, most central)"),
    h("option", { value: "reject" }, "Refuse a photo with a second face (nobody behind the "
      + "claimant)"),
    h("option", { value: "any" }, "Look for the subject among every face (needs a subject)"));
  const pick = (slot, which) => (files) => {
    picked[which] = files[0];
    slot.replaceChildren(boxedPhoto(track(URL.createObjectURL(files[0])), [], files[0].name));
  };

  async function verify(event) {
    event.preventDefault();
    const form = new FormData();
    if (!picked.a) {
      result.replaceChildren(message("error", "Choose the first photo."));
      return;
    }
    if (subject.value) {
      form.append("image", picked.a);
      form.append("subject_id", subject.value);
    } else if (several.value === "any") {
      result.replaceChildren(message("error", "“Look for the subject among every face” "
        + "needs a subject to look for: name one, or choose another rule."));
      return;
    } else if (picked.b) {
      form.append("image_a", picked.a);
      form.append("image_b", picked.b);
    } else {
      result.replaceChildren(message("error", "Choose a second photo or name a subject."));
      return;
    }
    form.append("on_multiple", several.value);
    delete result.dataset.match; // until this comparison's answer
    result.replaceChildren(message("info", "Comparing…"));
    try {
      const body = await post("/verify", form);
      result.replaceChildren(h("div", { class: "card" },
        h("h2", { class: body.matched ? "decision pass" : "decision fail" },
          body.matched ? "Same person" : "Not the same person"),
        similarityBar(body.similarity, body.threshold),
        h("p", {}, `similarity ${fixed(body.similarity)} against threshold `
          + `${fixed(body.threshold)}`
          + (body.templates_compared ? ` (best of ${body.templates_compared} templates)` : "")),
        facesUsed(body),
        operatingPoint(body.operating_point)));
      result.dataset.match = String(body.matched);
    } catch (err) {
      result.replaceChildren(message("error", errorText(err)));
    }
  }

  view.append(h("h1", {}, "Verify"),
    h("form", { class: "card", onsubmit: verify },
      h("div", { class: "split" },
        h("div", {}, h("label", {}, "First photo"),
          photoInput(pick(slotA, "a"), { name: "verify-a" }), slotA),
        h("div", {}, h("label", {}, "Second photo"),
          photoInput(pick(slotB, "b"), { name: "verify-b" }), slotB,
          h("label", { for: "verify-subject" }, "…or a subject"), subject)),
      h("label", { for: "verify-on-multiple" }, "Photos with several faces"), several,
      h("div", { class: "actions" }, h("button", { type: "submit", id: "verify-submit" },
        "Compare"))),
    result);
}
