// The official JavaScript SDK's DaprClient over gRPC (CommunicationProtocolEnum.GRPC), against
// the Dapr gRPC API on port argv[2]: publish and bulk publish, set and get the metadata,
// invoke app id argv[3] at method argv[4], read secrets of store argv[5] (when given), and
// publish to a pubsub that does not exist. Prints, as JSON, what each call returned
// ("resolved") or the error it raised ("rejected": the gRPC code, message and the status
// details, each as its type name and base64 bytes, for the test to decode).
const { DaprClient, CommunicationProtocolEnum, HttpMethod } = require("@dapr/dapr");

function rejection(error) {
  // pubsub.publish throws {error: ConnectError}; the other calls throw the ConnectError itself.
  const cause = error && error.error ? error.error : error;
  return {
    code: cause && cause.code !== undefined ? cause.code : null,
    message: String(cause && cause.rawMessage !== undefined ? cause.rawMessage : cause),
    details: ((cause && cause.details) || []).map((detail) => ({
      type: detail.type || (detail.desc && detail.desc.typeName) || "",
      value: Buffer.from(detail.value || []).toString("base64"),
    })),
  };
}

async function outcome(call) {
  try {
    const value = await call();
    return { resolved: value === undefined ? null : value };
  } catch (error) {
    return { rejected: rejection(error) };
  }
}

async function main() {
  const [port, appId, method, store] = process.argv.slice(2);
  const client = new DaprClient({
    daprHost: "127.0.0.1",
    daprPort: port,
    communicationProtocol: CommunicationProtocolEnum.GRPC,
    // daprApiToken: read from DAPR_API_TOKEN by the SDK, sent as dapr-api-token metadata
  });
  const result = {
    published: await outcome(() => client.pubsub.publish("pubsub", "orders", { from: "js-grpc", n: 1 })),
    bulk: await outcome(() => client.pubsub.publishBulk("pubsub", "orders", [{ from: "js-grpc-bulk", n: 2 }])),
    setMetadata: await outcome(() => client.metadata.set("fromJs", "grpc")),
    metadata: await outcome(() => client.metadata.get()),
    invoked: await outcome(() => client.invoker.invoke(appId, method, HttpMethod.POST, { n: 3 })),
    unknownPubsub: await outcome(() => client.pubsub.publish("nope", "orders", { n: 4 })),
  };
  if (store) {
    result.secret = await outcome(() => client.secret.get(store, "password"));
    result.bulkSecrets = await outcome(() => client.secret.getBulk(store));
    result.unknownStore = await outcome(() => client.secret.get("nostore", "password"));
  }
  console.log(JSON.stringify(result));
  await client.stop();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
