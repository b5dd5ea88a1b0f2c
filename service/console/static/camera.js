// The webcam as a photo source: getUserMedia into a <video>, a snapshot into a JPEG File.
import { h, message } from "./dom.js";

export function cameraControl(onPhoto) {
  const area = h("div", { class: "camera" });
  const video = h("video", { autoplay: true, playsInline: true, muted: true });
  let stream = null;

  function stop() {
    if (stream) for (const track of stream.getTracks()) track.stop();
    stream = null;
    area.replaceChildren(start);
  }

  function snapshot() {
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      if (blob) onPhoto(new File([blob], `webcam-${Date.now()}.jpg`, { type: "image/jpeg" }));
    }, "image/jpeg", 0.92);
  }

  async function open() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      area.append(message("error", "This browser offers no camera to this page (it needs "
        + "https, or localhost)."));
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (err) {
      area.append(message("error", `The camera cannot be used: ${err.message}`));
      return;
    }
    const snap = h("button", { type: "button", class: "take-photo", disabled: true,
      onclick: snapshot }, "Take photo");
    video.addEventListener("loadeddata", () => { snap.disabled = false; }, { once: true });
    video.srcObject = stream;
    area.replaceChildren(video, h("div", { class: "actions" }, snap,
      h("button", { type: "button", class: "secondary", onclick: stop }, "Stop camera")));
  }

  const start = h("button", { type: "button", class: "secondary use-webcam", onclick: open },
    "Use webcam");
  area.append(start);
  // The page may be left with the camera on: stop it when the next page is shown.
  window.addEventListener("console:leave", stop, { once: true });
  return area;
}
