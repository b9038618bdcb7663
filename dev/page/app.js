// The demo page: ask our backend for an upload, send the file to its session
// URL with UpChunk, then show the upload's status and source_url.
"use strict";

const $ = (id) => document.getElementById(id);
// Chunk size in KiB (a multiple of 256, as GCS requires): ?chunk_kib=256 for small demos.
const CHUNK_KIB = Number(new URLSearchParams(location.search).get("chunk_kib")) || 5120;
let upload = null;

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showProgress(percent) {
  $("progress").value = percent;
  $("percent").textContent = `${Math.floor(percent)}%`;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await response.json();
  if (!response.ok) {
    const error = json.error || { code: `http_${response.status}`, message: "no message" };
    throw new Error(`${error.code}: ${error.message}`);
  }
  return json;
}

// What the service read of the bytes: "1.0 s, 64x48, h264 + aac" (the parts the format states).
function describe(media) {
  if (!media) return "-";
  const parts = [];
  if (media.duration_seconds !== null) parts.push(`${media.duration_seconds} s`);
  if (media.width !== null) parts.push(`${media.width}x${media.height}`);
  if (media.codecs.length) parts.push(media.codecs.join(" + "));
  return parts.join(", ") || "-";
}

async function settle(id) {
  // The storage event (or the GET itself) completes the upload moments after the last chunk.
  for (let i = 0; i < 60; i++) {
    const shown = await api("GET", `/api/uploads/${id}`);
    $("upload-status").textContent = shown.status;
    if (shown.status !== "pending") return shown;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error("the upload is still pending");
}

$("start").addEventListener("click", async () => {
  const file = $("file").files[0];
  if (!file) return say("Pick a file first.", true);
  $("start").disabled = true;
  showProgress(0);
  try {
    say("Creating the upload ...");
    const created = await api("POST", "/api/uploads", {
      filename: file.name,
      content_type: file.type || "application/octet-stream",
      size_bytes: file.size,
    });
    $("upload-id").textContent = created.id;
    $("upload-status").textContent = "pending";
    upload = UpChunk.createUpload({ endpoint: created.upload_url, file, chunkSize: CHUNK_KIB });
    $("pause").disabled = false;
    say("Uploading ...");
    upload.on("progress", (event) => showProgress(event.detail));
    upload.on("attemptFailure", (event) => say(`Chunk failed, retrying: ${event.detail.message}`));
    upload.on("error", (event) => {
      say(`Upload failed: ${event.detail.message}`, true);
      $("start").disabled = false;
    });
    upload.on("success", async () => {
      $("pause").disabled = $("resume").disabled = true;
      showProgress(100);
      say("Uploaded; waiting for the upload to complete ...");
      try {
        const done = await settle(created.id);
        if (done.status === "completed") {
          $("source").href = $("source").textContent = done.source_url;
          $("media").textContent = describe(done.media);
          say(`Done: ${done.status}.`);
        } else {
          // Rejected: the bytes that landed were not the file declared (its size or checksum), or not
          // the media type declared (the service reads and identifies them before serving them).
          const why = done.rejection ? ` (${done.rejection.code}: ${done.rejection.message})` : "";
          say(`The upload is ${done.status}${why}`, true);
        }
      } catch (error) {
        say(error.message, true);
      }
      $("start").disabled = false;
    });
  } catch (error) {
    say(error.message, true);
    $("start").disabled = false;
  }
});

$("pause").addEventListener("click", () => {
  upload.pause();  // the chunk in flight finishes; no other starts
  $("pause").disabled = true;
  $("resume").disabled = false;
  say("Paused.");
});

$("resume").addEventListener("click", () => {
  $("resume").disabled = true;
  $("pause").disabled = false;
  say("Uploading ...");
  upload.resume();
});
