// Preload (`node --import ./scripts/loopback-listen.mjs ...`) that makes a server which
// calls `listen(port)` without a host bind to loopback only. server-everything's
// streamableHttp transport calls `app.listen(PORT)`, which would otherwise listen on
// every interface. HOST overrides the address (default 127.0.0.1).
import net from "node:net";

const host = process.env.HOST || "127.0.0.1";
const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  const first = args[0];
  const isPort =
    typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first));
  if (isPort && typeof args[1] !== "string") {
    args.splice(1, 0, host);
  }
  return listen.apply(this, args);
};
