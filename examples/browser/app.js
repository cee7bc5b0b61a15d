// The example page: connects a BrowserClient to the swarm named in the query string
// (?bootstrap=<multiaddr>[,<multiaddr>...]&model=<url>&prefix=<dht prefix>&tokens=<n>&min=<n>) and streams
// a generation token by token, with the route taken and the speed.
import init, { BrowserClient } from "./pkg/kwaai_wasm.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const setState = (state) => { document.body.dataset.state = state; };
const status = (text) => { $("status").textContent = text; };
const short = (peer) => `${peer.slice(0, 6)}…${peer.slice(-4)}`;
const showRoute = (hops) => {
  $("route").textContent = hops.length
    ? hops.map((h) => `${short(h.peer)} [${h.start}:${h.end})`).join(" → ")
    : "–";
};

const events = [];

function onEvent(event) {
  events.push(event.kind);
  $("events").textContent = JSON.stringify(events);
  switch (event.kind) {
    case "connected": status(`connected to ${short(event.peer)}`); break;
    case "disconnected": status(`lost ${short(event.peer)}: ${event.message}; reconnecting…`); break;
    case "route": showRoute(event.hops); break;
    case "retry": status(`retrying: ${event.message}`); break;
    case "error": status(event.message); break;
  }
}

let client;
let stream;

async function generate() {
  const prompt = $("prompt").value;
  const maxNewTokens = Number($("max-new-tokens").value) || 16;
  const minNewTokens = Number(params.get("min")) || 0;
  const output = $("output");
  output.replaceChildren(Object.assign(document.createElement("span"), { className: "prompt", textContent: prompt }));
  const ids = [];
  $("tokens").textContent = "[]";
  $("speed").textContent = "–";
  $("generate").disabled = true;
  $("stop").disabled = false;
  setState("generating");
  status("generating…");
  let started;
  try {
    stream = client.generate(prompt, { maxNewTokens, minNewTokens });
    started = performance.now();
    for await (const token of stream) {
      ids.push(token.id);
      output.append(token.text);
      $("tokens").textContent = JSON.stringify(ids);
      const seconds = (performance.now() - started) / 1000;
      $("speed").textContent = `${ids.length} tokens in ${seconds.toFixed(3)} s: ${(ids.length / seconds).toFixed(2)} tokens/s`;
    }
    showRoute(client.route);
    status(`done: ${ids.length} tokens`);
    setState("done");
  } catch (error) {
    status(error.message);
    setState("error");
  } finally {
    stream = undefined;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function main() {
  const bootstrap = (params.get("bootstrap") || "").split(",").filter(Boolean);
  const modelUrl = params.get("model") || "./model/";
  if (params.get("tokens")) $("max-new-tokens").value = params.get("tokens");
  if (params.get("prompt")) $("prompt").value = params.get("prompt");
  if (bootstrap.length === 0) {
    status("give the kwaai node's /ws or /webrtc-direct address: ?bootstrap=/ip4/…/tcp/…/ws/p2p/…&model=…&prefix=…");
    setState("error");
    return;
  }
  try {
    await init();
    status("connecting…");
    const options = { bootstrap, modelUrl, onEvent };
    if (params.get("prefix")) options.dhtPrefix = params.get("prefix");
    client = await BrowserClient.connect(options);
    status(`ready: connected to ${short(client.connectedPeer)}; this page is ${short(client.peerId)}`);
    $("generate").disabled = false;
    setState("ready");
  } catch (error) {
    status(error.message);
    setState("error");
  }
}

$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => stream && stream.cancel());
main();
