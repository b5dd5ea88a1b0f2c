// The webcam as a photo source: getUserMedia into a <video>, a snapshot into a JPEG File.
import { h, message } from "./dom.js";

export function cameraControl(onPhoto) {
  const area = h("div", { class: "camera" });
  let stream = null;
  const video = h("video", { autoplay: true, playsInline: true, muted: true });
  const stop = () => {
    if (stream) for (const track of stream.getTracks()) track.stop();
    stream = null;
    area.replaceChildren(start);
  };
  const snap = h("button", { type: "button", onclick: () => {
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      if (blob) onPhoto(new File([blob], `webcam-${Date.now()}.jpg`, { type: "image/jpeg" }));
    }, "image/jpeg", 0.92);
  } }, "Take photo");
  const start = h("button", { type: "button", class: "secondary", onclick: async () => {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      area.append(message("error", "This browser gives no camera here (it needs https or "
        + "localhost)."));
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (err) {
      area.append(message("error", `The camera cannot be used: ${err.message}`));
      return;
    }
    video.srcObject = stream;
    area.replaceChildren(video, h("div", { class: "actions" }, snap,
      h("button", { type: "button", class: "secondary", onclick: stop }, "Stop camera")));
  } }, "Use webcam");
  area.append(start);
  // The page may be left with the camera on: stop it when the element goes away.
  window.addEventListener("hashchange", stop, { once: true });
  return area;
}
