// AsyncAPI's own parser (@asyncapi/parser) on the document read from standard input: prints its
// diagnostics and, when it parsed, what it read (channels, operations, messages), as JSON.
const { Parser } = require("@asyncapi/parser");

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const { document, diagnostics } = await new Parser().parse(Buffer.concat(chunks).toString("utf8"));
  const read = document && {
    channels: document.channels().all().map((channel) => [channel.id(), channel.address()]),
    operations: document.operations().all().map((operation) => [
      operation.id(),
      operation.action(),
      operation.channels().all().map((channel) => channel.id()),
      operation.messages().all().map((message) => message.id()),
    ]),
    messages: document.components().messages().all().map((message) => message.id()),
    servers: document.servers().all().map((server) => [server.id(), server.protocol(), server.host()]),
  };
  const found = diagnostics.map(({ code, severity, message, path }) => ({ code, severity, message, path }));
  console.log(JSON.stringify({ diagnostics: found, read }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
