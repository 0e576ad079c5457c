// The official JavaScript SDK's DaprServer over HTTP, on port argv[2], behind the sidecar on
// port argv[3]: one subscription; prints each event it receives as a JSON line.
require("./loopback");
const { DaprServer, CommunicationProtocolEnum } = require("@dapr/dapr");

async function main() {
  const server = new DaprServer({
    serverHost: "127.0.0.1",
    serverPort: process.argv[2],
    communicationProtocol: CommunicationProtocolEnum.HTTP,
    clientOptions: { daprHost: "127.0.0.1", daprPort: process.argv[3] },
  });
  await server.pubsub.subscribe("pubsub", "orders", async (data, headers) => {
    console.log("RECEIVED " + JSON.stringify({ data, token: headers["dapr-api-token"] || null }));
  });
  await server.start();
  console.log("JS SERVER STARTED");
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
