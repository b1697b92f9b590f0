// orstream web: draws the frames of /ws on a canvas and measures capture to painted.
// Protocol (pipeline/web/server.py): binary messages are a 4-byte big-endian header length,
// a JSON header and a JPEG; text messages are JSON {t: "hello" | "status" | "tab"}. This page
// answers every frame once it is done with it, painted ({t: "painted"}) or superseded by a
// newer one ({t: "ack"}): the server sends a tab a frame only while few are unanswered, so a
// hidden or stalled tab is sent nothing, and the frames that come are the newest.
// It also says what it shows the video in, in device pixels (w, h in the WebSocket's URL,
// then {t: "size"} on every change), and the server sends frames scaled to fit: decoding and
// compositing a 1080p JPEG to show it in a smaller canvas is most of a browser's work.
// A frame scaled for this page is shown at its own pixels, one per device pixel: the area
// (#screen) is what is measured, the canvas is sized to the frame inside it. Stretching it
// over the few pixels the server's size step rounds off would make the compositor rescale
// every frame (with software compositing, 6.8 ms of CPU per full-HD frame against 2.0 ms
// 1:1, benchmarks/web.py). A frame sent at full resolution (a stream smaller than the
// area, or ?full=1) fills the area as it comes.
// ?full=1 in the page's URL: say nothing, get full resolution.
// Prompts: a TP-SIS frame's header carries its own class table (task "prompts"); the page
// lists the painted frame's prompts in their colours and shows the prompts box only then
// (hello's `prompts` until the first frame: null for a pipeline without prompts).
"use strict";

const KEEP = 300;  // frames in the figures and the plot
const params = new URLSearchParams(location.search);
const token = params.get("token");
const full = params.get("full") === "1";
const query = token ? "?token=" + encodeURIComponent(token) : "";
const $ = (id) => document.getElementById(id);
const screen = $("screen");  // the area the video is shown in
const video = $("video");
// alpha: false: the frames are opaque, so the compositor need not blend the canvas.
const draw = video.getContext("2d", {alpha: false});
const text = new TextDecoder();

// What the page has shown, for people (the table) and for scripts and tests (window.orstream).
const state = window.orstream = {
  connected: false, painted: 0, lastSeq: null, seqs: [], latencies: [], paintedAt: [],
  dropped: 0, caption: null, header: null, tab: null, status: "",
  size: null,  // {w, h}: the canvas's box in device pixels, as last told to the server
  prompts: null,  // the prompts of the frame shown; null: the pipeline segments none
  promptsReply: null,  // the last reply to the prompts box
};

function wallNowMs() {
  // The wall clock at sub-millisecond resolution: the header's capture time is wall clock.
  return performance.timeOrigin + performance.now();
}

function nextAnimationFrame() {
  return new Promise((resolve) => requestAnimationFrame(resolve));
}

function percentile(sorted, q) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q / 100 * sorted.length))];
}

function keepLast(list, value) {
  list.push(value);
  if (list.length > KEEP) list.shift();
}

// -------------------------------------------------------------------------- the size

function boxOf(entry) {
  // Device pixels exactly where the browser knows them (Chromium), else CSS px x the ratio.
  const exact = entry.devicePixelContentBoxSize && entry.devicePixelContentBoxSize[0];
  if (exact) return {w: exact.inlineSize, h: exact.blockSize};
  const ratio = window.devicePixelRatio || 1;
  return {w: Math.round(entry.contentRect.width * ratio),
          h: Math.round(entry.contentRect.height * ratio)};
}

function observeSize() {
  // Now, for the WebSocket's URL (the observer's first call comes after the next layout).
  const rect = screen.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  const now = {w: Math.round(rect.width * ratio), h: Math.round(rect.height * ratio)};
  if (now.w >= 1 && now.h >= 1) state.size = now;
  const sizer = new ResizeObserver((entries) => {
    const box = boxOf(entries[entries.length - 1]);
    if (box.w < 1 || box.h < 1) return;  // hidden: keep the last size
    if (state.size && state.size.w === box.w && state.size.h === box.h) return;
    state.size = box;
    send({t: "size", w: box.w, h: box.h});
  });
  try {
    sizer.observe(screen, {box: "device-pixel-content-box"});
  } catch (error) {  // a browser without that box: CSS pixels, scaled in boxOf
    sizer.observe(screen);
  }
}

function sizeQuery() {
  if (!state.size) return "";
  return (query ? "&" : "?") + "w=" + state.size.w + "&h=" + state.size.h;
}

// ------------------------------------------------------------------------------ frames

let socket = null;
let pending = null;  // the newest frame not yet drawn: {header, jpeg, arrived}
let drawing = false;

function connect() {
  // The size known now in the URL: the first frame already comes at it.
  socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") +
                         location.host + "/ws" + query + sizeQuery());
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    state.connected = true;
    if (state.size) send({t: "size", w: state.size.w, h: state.size.h});  // changed since?
  };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") return onText(JSON.parse(event.data));
    const arrived = wallNowMs();
    const length = new DataView(event.data).getUint32(0);
    const header = JSON.parse(text.decode(new Uint8Array(event.data, 4, length)));
    const jpeg = new Blob([new Uint8Array(event.data, 4 + length)], {type: "image/jpeg"});
    if (pending) {  // a newer frame came before the last was drawn: show the newer one
      state.dropped += 1;
      send({t: "ack", seq: pending.header.seq});
    }
    pending = {header, jpeg, arrived};
    if (!drawing) drawPending();
  };
  socket.onclose = () => {
    state.connected = false;
    showStatus("disconnected from the server: retrying…");
    setTimeout(connect, 1000);
  };
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

async function drawPending() {
  drawing = true;
  while (pending) {
    const {header, jpeg, arrived} = pending;
    pending = null;
    let bitmap;
    try {
      // Decoded off the main thread, at the size sent: the server scaled it to this
      // canvas's box already, so nothing is scaled here (no resizeWidth/resizeQuality).
      bitmap = await createImageBitmap(jpeg);
    } catch (error) {
      send({t: "ack", seq: header.seq});
      continue;
    }
    const decoded = wallNowMs();
    // The canvas has the JPEG's pixels: drawImage copies 1:1.
    if (video.width !== bitmap.width || video.height !== bitmap.height) {
      video.width = bitmap.width;
      video.height = bitmap.height;
    }
    fit(header);
    draw.drawImage(bitmap, 0, 0);
    bitmap.close();
    await nextAnimationFrame();  // the canvas is composited with this animation frame
    const latency = wallNowMs() - header.t_wall_ms;
    painted(header, latency);
    send({t: "painted", seq: header.seq, latency_ms: latency, dropped: state.dropped,
          arrived_ms: arrived - header.t_wall_ms, decoded_ms: decoded - header.t_wall_ms});
  }
  drawing = false;
}

let fitted = "";  // how the canvas is laid out now, to touch the layout only on a change

function fit(header) {
  // The area keeps the stream's aspect; a frame scaled for this page is shown 1:1 in it
  // (device pixels, centred), one sent at full resolution fills it.
  const scaled = header.sent_width < header.width;
  const ratio = window.devicePixelRatio || 1;
  const key = [header.width, header.height, header.sent_width, header.sent_height, scaled,
               ratio].join();
  if (key === fitted) return;
  fitted = key;
  screen.style.aspectRatio = header.width + " / " + header.height;
  video.style.width = scaled ? header.sent_width / ratio + "px" : "100%";
  video.style.height = scaled ? header.sent_height / ratio + "px" : "100%";
}

function painted(header, latency) {
  state.painted += 1;
  state.lastSeq = header.seq;
  state.header = header;
  keepLast(state.seqs, header.seq);
  keepLast(state.latencies, latency);
  keepLast(state.paintedAt, performance.now());
  if (header.caption) state.caption = header.caption;
  showPrompts(promptsOf(header.classes), header.classes ? header.classes.colors : null);
}

// -------------------------------------------------------------------- server's messages

function onText(message) {
  if (message.t === "hello") {
    state.tab = message.tab;
    $("endpoint").textContent = message.endpoint;
    $("question").disabled = $("ask-button").disabled = !message.ask;
    if (!message.ask) $("answer").textContent = "questions need `orstream web ... --ask ENDPOINT`";
    $("prompts").disabled = $("prompts-button").disabled = !message.ask;
    if (!message.ask) {
      $("prompts-reply").textContent = "changing prompts needs `orstream web ... --ask ENDPOINT`";
    }
    showPrompts(message.prompts, null);
  } else if (message.t === "status") {
    showStatus(message.text);
  } else if (message.t === "tab") {
    state.server = message;
    showStatus(message.status);
  }
}

function showStatus(message) {
  state.status = message || "";
  $("status").textContent = state.status;
}

// ------------------------------------------------------------------------ the figures

function ms(value) {
  return value === null ? "–" : value.toFixed(1) + " ms";
}

function showFigures() {
  const header = state.header;
  if (header) {
    const sorted = state.latencies.slice().sort((a, b) => a - b);
    const times = state.paintedAt;
    const recent = times.length > 1 && performance.now() - times[times.length - 1] < 1000;
    const fps = recent ? (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000) : 0;
    const sent = header.sent_width === header.width ? "" :
      ", sent at " + header.sent_width + "×" + header.sent_height;
    $("seq").textContent = header.seq + " (" + header.width + "×" + header.height + sent + ")";
    $("fps").textContent = fps.toFixed(1);
    $("latency").textContent = "p50 " + ms(percentile(sorted, 50)) + " · p95 " +
      ms(percentile(sorted, 95)) + " · p99 " + ms(percentile(sorted, 99));
    $("server-latency").textContent = ms(header.server.receipt_ms);
    const skipped = state.server ? state.server.skipped : 0;
    const lost = state.server ? state.server.lost : header.server.lost;
    $("drops").textContent = lost + " · " + skipped + " · " + state.dropped;
  }
  if (state.caption) {
    $("caption").textContent = state.caption.text;
    $("caption-age").textContent = "(" + (state.caption.age_ms / 1000).toFixed(1) +
      " s old, frame " + state.caption.seq + ")";
  }
  plot();
}

function plot() {
  const canvas = $("plot");
  const g = canvas.getContext("2d");
  const values = state.latencies;
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (!values.length) return;
  const sorted = values.slice().sort((a, b) => a - b);
  const top = Math.max(50, percentile(sorted, 100) * 1.1);
  const y = (v) => canvas.height - (v / top) * canvas.height;
  g.fillStyle = "#777";
  g.font = "10px sans-serif";
  g.fillText(top.toFixed(0) + " ms", 4, 10);
  g.strokeStyle = "#a63";
  g.setLineDash([4, 3]);
  g.beginPath();
  g.moveTo(0, y(percentile(sorted, 95)));
  g.lineTo(canvas.width, y(percentile(sorted, 95)));
  g.stroke();
  g.setLineDash([]);
  g.strokeStyle = "#4c8";
  g.beginPath();
  values.forEach((v, i) => {
    const x = (i / (KEEP - 1)) * canvas.width;
    if (i === 0) g.moveTo(x, y(v)); else g.lineTo(x, y(v));
  });
  g.stroke();
}

// -------------------------------------------------------------------------- questions

async function post(path, body) {
  const response = await fetch(path + query, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  return response.json();
}

$("ask-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = $("answer");
  const question = $("question").value;
  answer.className = "answer";
  answer.textContent = "asking…";
  try {
    const reply = await post("/api/ask", {question});
    if (reply.error) {
      answer.className = "answer error";
      answer.textContent = reply.error;
    } else {
      answer.textContent = reply.answer + "  (frame " + reply.seq + ", " +
        reply.ms.toFixed(0) + " ms)";
    }
  } catch (error) {
    answer.className = "answer error";
    answer.textContent = "no answer: " + error;
  }
});

// --------------------------------------------------------------------------- prompts

let shownPrompts = "null";  // what the list shows now, to redraw it only when it changes

function promptsOf(classes) {
  // A frame's own class table (TP-SIS): the names after "background" are its prompts.
  return classes && classes.task === "prompts" ? classes.names.slice(1) : null;
}

function showPrompts(prompts, colors) {
  const key = JSON.stringify([prompts, colors]);
  if (key === shownPrompts) return;
  shownPrompts = key;
  state.prompts = prompts;
  $("prompts-box").hidden = prompts === null;
  $("prompt-list").replaceChildren(...(prompts || []).map((prompt, i) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    if (colors) swatch.style.backgroundColor = "rgb(" + colors[i + 1].join(",") + ")";
    item.append(swatch, prompt);  // as text: a prompt is never markup
    return item;
  }));
  // The box shows what runs, unless someone is typing in it.
  const box = $("prompts");
  if (prompts && document.activeElement !== box) box.value = prompts.join("\n");
}

function parsePrompts(text) {
  // One per line; a single line may list them comma separated (a prompt with a comma in it
  // goes on a line of its own). The server says what is wrong with what is left.
  const parts = text.includes("\n") ? text.split("\n") : text.split(",");
  return parts.map((part) => part.trim()).filter((part) => part);
}

$("prompts-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const reply = $("prompts-reply");
  reply.className = "answer";
  reply.textContent = "setting…";
  try {
    const answer = state.promptsReply =
      await post("/api/prompts", {prompts: parsePrompts($("prompts").value)});
    if (answer.error) {
      reply.className = "answer error";
      reply.textContent = answer.error;
    } else {
      reply.textContent = "set: " + answer.prompts.join(" · ") + (answer.seq === null ?
        "  (no frame has used them yet)" :
        "  (from frame " + answer.seq + ", encoded in " + answer.ms.toFixed(0) + " ms)") +
        (answer.read_as || []).map((r) =>
          "; “" + r.prompt + "” read as “" + r.read_as + "”").join("");
    }
  } catch (error) {
    reply.className = "answer error";
    reply.textContent = "no reply: " + error;
  }
});

$("prompts").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();  // Enter sets the prompts; Shift+Enter starts a new line
    $("prompts-form").requestSubmit();
  }
});

setInterval(showFigures, 250);
if (!full) observeSize();
connect();
