// The official JavaScript SDK's DaprClient over HTTP, against the sidecar on port argv[2]:
// one publish, one bulk publish and one invocation; prints what each returned, as JSON.
const { DaprClient, CommunicationProtocolEnum, HttpMethod } = require("@dapr/dapr");

async function main() {
  const client = new DaprClient({
    daprHost: "127.0.0.1",
    daprPort: process.argv[2],
    communicationProtocol: CommunicationProtocolEnum.HTTP,
    // daprApiToken: read from DAPR_API_TOKEN by the SDK
  });
  const published = await client.pubsub.publish("pubsub", "orders", { from: "js", n: 1 });
  const bulk = await client.pubsub.publishBulk("pubsub", "orders", [{ from: "js-bulk", n: 2 }]);
  const invoked = await client.invoker.invoke(process.argv[3], "hello/js?via=sdk", HttpMethod.POST, {
    n: 3,
  });
  console.log(JSON.stringify({ published, bulk, invoked }));
  await client.stop();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
