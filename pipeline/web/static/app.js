// orstream web: draws the frames of /ws on a canvas and measures capture to painted.
// Protocol (pipeline/web/server.py): binary messages are a 4-byte big-endian header length,
// a JSON header and a JPEG; text messages are JSON {t: "hello" | "status" | "tab"}. This page
// answers every frame once it is done with it, painted ({t: "painted"}) or superseded by a
// newer one ({t: "ack"}): the server sends a tab a frame only while few are unanswered, so a
// hidden or stalled tab is sent nothing, and the frames that come are the newest.
"use strict";

const KEEP = 300;  // frames in the figures and the plot
const token = new URLSearchParams(location.search).get("token");
const query = token ? "?token=" + encodeURIComponent(token) : "";
const $ = (id) => document.getElementById(id);
const video = $("video");
const draw = video.getContext("2d");
const text = new TextDecoder();

// What the page has shown, for people (the table) and for scripts and tests (window.orstream).
const state = window.orstream = {
  connected: false, painted: 0, lastSeq: null, seqs: [], latencies: [], paintedAt: [],
  dropped: 0, caption: null, header: null, tab: null, status: "",
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

// ------------------------------------------------------------------------------ frames

let socket = null;
let pending = null;  // the newest frame not yet drawn: {header, jpeg}
let drawing = false;

function connect() {
  socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") +
                         location.host + "/ws" + query);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => { state.connected = true; };
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
      bitmap = await createImageBitmap(jpeg);  // decoded off the main thread
    } catch (error) {
      send({t: "ack", seq: header.seq});
      continue;
    }
    if (video.width !== bitmap.width || video.height !== bitmap.height) {
      video.width = bitmap.width;
      video.height = bitmap.height;
    }
    draw.drawImage(bitmap, 0, 0);
    bitmap.close();
    await nextAnimationFrame();  // the canvas is composited with this animation frame
    const latency = wallNowMs() - header.t_wall_ms;
    painted(header, latency);
    send({t: "painted", seq: header.seq, latency_ms: latency, dropped: state.dropped,
          arrived_ms: arrived - header.t_wall_ms});
  }
  drawing = false;
}

function painted(header, latency) {
  state.painted += 1;
  state.lastSeq = header.seq;
  state.header = header;
  keepLast(state.seqs, header.seq);
  keepLast(state.latencies, latency);
  keepLast(state.paintedAt, performance.now());
  if (header.caption) state.caption = header.caption;
}

// -------------------------------------------------------------------- server's messages

function onText(message) {
  if (message.t === "hello") {
    state.tab = message.tab;
    $("endpoint").textContent = message.endpoint;
    $("question").disabled = $("ask-button").disabled = !message.ask;
    if (!message.ask) $("answer").textContent = "questions need `orstream web ... --ask ENDPOINT`";
    $("prompts-box").hidden = !message.prompts;
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
    $("seq").textContent = header.seq + " (" + header.width + "×" + header.height + ")";
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

$("prompts-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const reply = await post("/api/prompts", {prompts: $("prompts").value});
  $("prompts-reply").textContent = reply.error || "prompts set";
});

setInterval(showFigures, 250);
connect();
