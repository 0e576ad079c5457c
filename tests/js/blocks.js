// The official JavaScript SDK's DaprClient over HTTP, against the sidecar on port argv[2]:
// calls of building blocks the sidecar does not serve, then the metadata and shutdown calls.
// Prints, as JSON, what each call returned ("resolved") or the error it raised ("rejected").
const { DaprClient, CommunicationProtocolEnum } = require("@dapr/dapr");

function text(error) {
  return String(error && error.message ? error.message : error);
}

async function outcome(call) {
  try {
    const value = await call();
    // state.save returns {error: Error} instead of raising; an Error's message is not enumerable.
    if (value && value.error instanceof Error) {
      return { resolved: { error: text(value.error) } };
    }
    return { resolved: value === undefined ? null : value };
  } catch (error) {
    return { rejected: text(error) };
  }
}

async function main() {
  const client = new DaprClient({
    daprHost: "127.0.0.1",
    daprPort: process.argv[2],
    communicationProtocol: CommunicationProtocolEnum.HTTP,
  });
  const result = {
    save: await outcome(() => client.state.save("statestore", [{ key: "k", value: "v" }])),
    get: await outcome(() => client.state.get("statestore", "k")),
    binding: await outcome(() => client.binding.send("mybinding", "create", { a: 1 })),
    lock: await outcome(() => client.lock.lock("lockstore", "resource", "owner", 10)),
    workflow: await outcome(() => client.workflow.getWorkflowState("instance1")),
    setMetadata: await outcome(() => client.metadata.set("fromJs", "hello")),
    metadata: await outcome(() => client.metadata.get()),
  };
  result.shutdown = await outcome(() => client.sidecar.shutdown());
  console.log(JSON.stringify(result));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
