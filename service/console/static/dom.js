// Building the page without ever parsing HTML: every string becomes a text node, so a subject
// id such as "<script>" is shown as those characters and can never become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// replaceChildren, skipping null/false children (the native one would show "null").
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// Object URLs (picked photos, chips) live until the next page is shown.
const urls = new Set();
export function track(url) {
  urls.add(url);
  return url;
}
export function releaseUrls() {
  for (const url of urls) URL.revokeObjectURL(url);
  urls.clear();
}

export function message(kind, ...text) {
  return h("p", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" },
    ...text);
}

export function errorText(err) {
  return err && err.code ? `${err.message} (${err.code})` : String(err && err.message || err);
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export const fixed = (value, digits = 3) =>
  (typeof value === "number" ? value.toFixed(digits) : "–");

// A photo with its faces boxed: `boxes` are {bbox, label, kind}; boxes are positioned in
// percent of the photo's natural size, so they follow the image however it is scaled. With
// `onPick`, each box is a button: a click (or Enter) calls onPick(its index, its element).
export function boxedPhoto(src, boxes, alt = "photo", { onPick } = {}) {
  const img = h("img", { src, alt });
  const figure = h("figure", { class: "boxed" }, img);
  const place = () => {
    const width = img.naturalWidth;
    const height = img.naturalHeight;
    if (!width || !height) return;
    boxes.forEach(({ bbox, label, kind }, index) => {
      const box = h("div", { class: `box ${kind || ""}`, dataset: { index: String(index) } },
        label ? h("span", { class: "label" }, label) : null);
      if (onPick) {
        const pick = () => onPick(index, box);
        box.classList.add("pickable");
        box.setAttribute("role", "button");
        box.tabIndex = 0;
        box.title = "Enroll this face";
        box.addEventListener("click", pick);
        box.addEventListener("keydown", (event) => {
          if (event.key === "Enter" || event.key === " ") {
            event.preventDefault();
            pick();
          }
        });
      }
      box.style.left = `${(100 * bbox.left) / width}%`;
      box.style.top = `${(100 * bbox.top) / height}%`;
      box.style.width = `${(100 * (bbox.right - bbox.left + 1)) / width}%`;
      box.style.height = `${(100 * (bbox.bottom - bbox.top + 1)) / height}%`;
      figure.append(box);
    });
    figure.dataset.ready = "true";
  };
  if (img.complete && img.naturalWidth) place();
  else img.addEventListener("load", place, { once: true });
  return figure;
}

// Similarity (cosine, -1..1) as a bar, with the threshold marked on the same scale. Faces
// mostly score above 0.5, so the bar starts there (or lower, for a low threshold).
export function similarityBar(similarity, threshold) {
  const low = Math.min(0.5, threshold - 0.25);
  const pct = (v) => `${Math.max(0, Math.min(1, (v - low) / (1 - low))) * 100}%`;
  const fill = h("div", { class: `fill ${similarity >= threshold ? "pass" : "fail"}` });
  fill.style.width = pct(similarity);
  const mark = h("div", { class: "threshold", title: `threshold ${fixed(threshold)}` });
  mark.style.left = pct(threshold);
  return h("div", { class: "bar", role: "img",
    "aria-label": `similarity ${fixed(similarity)} against threshold ${fixed(threshold)}` },
  fill, mark);
}

export function operatingPoint(point) {
  if (!point) return null;
  const parts = [`threshold ${fixed(point.threshold)}`, `source: ${point.source}`];
  if (point.fpir != null) parts.push(`target FPIR ${point.fpir}`);
  if (point.far != null) parts.push(`FAR per comparison ${point.far.toExponential(1)}`);
  if (point.tar != null) parts.push(`TAR ${fixed(point.tar)}`);
  if (point.gallery_faces != null) parts.push(`gallery of ${point.gallery_faces} faces`);
  if (point.dataset) parts.push(`calibrated on ${point.dataset}`);
  return h("p", { class: "operating-point" }, "Operating point: ", parts.join(", "));
}

// A modal confirmation naming what will happen; resolves true only on "confirm".
export function confirmAction(text, confirmLabel = "Delete") {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "confirm" });
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    append(dialog, [
      h("p", { class: "confirm-text" }, text),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary", onclick: () => done(false) }, "Cancel"),
        h("button", { type: "button", class: "danger confirm-yes", onclick: () => done(true) },
          confirmLabel)),
    ]);
    dialog.addEventListener("cancel", () => resolve(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}

// A file picker for photos; `onFiles` gets the chosen File objects.
export function photoInput(onFiles, { multiple = false, name = "photos" } = {}) {
  return h("input", { type: "file", accept: "image/*", multiple, name,
    onchange: (event) => {
      const files = [...event.target.files];
      event.target.value = "";
      if (files.length) onFiles(files);
    } });
}
