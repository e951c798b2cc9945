// A legacy frontend's Socket.IO usage, unchanged but for its server URL and token:
// connect with auth {token}, join a flow's room, print every event as a JSON line,
// and stop after the flow's final event (or on a connect error).
//
//   node legacy_client.mjs <url> <token> [flowId]
import { io } from "socket.io-client";

const [url, token, flowId] = process.argv.slice(2);
const socket = io(url, { auth: { token }, reconnection: false });
const print = (event, data) => process.stdout.write(JSON.stringify({ event, data }) + "\n");
const FINAL = new Set(["flow:completed", "flow:failed", "flow:cancelled"]);

socket.on("connect", () => {
  print("connect", { transport: socket.io.engine.transport.name });
  if (flowId) socket.emit("subscribe", { flowId }, (reply) => print("ack", reply));
});
socket.on("connect_error", (error) => {
  print("connect_error", { message: error.message });
  process.exit(2);
});
socket.onAny((event, data) => {
  print(event, data);
  if (FINAL.has(event) && (!flowId || data.flowId === flowId)) {
    setTimeout(() => {
      print("transport", { name: socket.io.engine.transport.name }); // after the upgrade: websocket
      socket.close();
      process.exit(0);
    }, 400); // the coalesced flow:updated comes last
  }
});
setTimeout(() => { print("timeout", {}); process.exit(3); }, 30000);
