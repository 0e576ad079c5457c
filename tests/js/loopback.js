// The SDK's server listens on every interface; the tests use loopback only.
const http = require("http");
const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (port, ...rest) {
  const callbacks = rest.filter((argument) => typeof argument === "function");
  return listen.call(this, port, "127.0.0.1", ...callbacks);
};
