// A Node.js client of DeliveryService, built at run time from proto/ with @grpc/proto-loader:
// it creates a survey, imports responses over the client stream and streams them back.
// Prints one JSON line with what it saw; tests/integration/test_node_client.py checks it.
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const protoRoot = path.resolve(here, "../../proto");
const definition = protoLoader.loadSync("surveymesh/delivery/v1/delivery_service.proto", {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { DeliveryService } = grpc.loadPackageDefinition(definition).surveymesh.delivery.v1;

const address = process.env.DELIVERY_ADDRESS;
const metadata = new grpc.Metadata();
metadata.set("authorization", `Bearer ${process.env.TOKEN}`);
const client = new DeliveryService(address, grpc.credentials.createInsecure());
const deadline = () => new Date(Date.now() + 10_000);

const unary = (method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, metadata, { deadline: deadline() }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    ),
  );

const survey = (
  await unary("CreateSurvey", {
    request_id: `node-${Date.now()}`,
    survey: {
      title: "Made in Node",
      questions: [
        { id: "nps", text: "Recommend us?", type: "QUESTION_TYPE_NPS", required: true },
        { id: "why", text: "Why?", type: "QUESTION_TYPE_FREE_TEXT" },
      ],
    },
  })
).survey;

const count = Number(process.env.RESPONSES || 25);
const imported = await new Promise((resolve, reject) => {
  const call = client.ImportResponses(metadata, { deadline: deadline() }, (err, reply) =>
    err ? reject(err) : resolve(reply),
  );
  for (let start = 0; start < count; start += 10) {
    const responses = [];
    for (let i = start; i < Math.min(count, start + 10); i++) {
      const t = { seconds: String(1790000000 + i), nanos: 0 };
      responses.push({
        id: `node-${String(i).padStart(4, "0")}`,
        start_time: t,
        complete_time: { seconds: String(1790000060 + i), nanos: 0 },
        completed: true,
        attributes: { region: i % 2 ? "EMEA" : "APAC" },
        answers: [
          { question_id: "nps", nps: i % 11 },
          { question_id: "why", text: `answer ${i}` },
        ],
      });
    }
    call.write({ survey_id: survey.id, responses });
  }
  // One invalid row: NPS out of range is rejected without dropping its neighbours.
  call.write({
    survey_id: survey.id,
    responses: [{ id: "node-bad", completed: false, answers: [{ question_id: "nps", nps: 11 }] }],
  });
  call.end();
});

const ids = [];
await new Promise((resolve, reject) => {
  const stream = client.StreamResponses({ survey_id: survey.id, batch_size: 7 }, metadata, {
    deadline: deadline(),
  });
  stream.on("data", (batch) => batch.responses.forEach((r) => ids.push(r.id)));
  stream.on("end", resolve);
  stream.on("error", reject);
});

console.log(
  JSON.stringify({
    survey_id: survey.id,
    accepted: Number(imported.accepted_count),
    rejected: Number(imported.rejected_count),
    rejection_reasons: imported.rejections.map((r) => r.reason),
    streamed_ids: ids,
  }),
);
client.close();
