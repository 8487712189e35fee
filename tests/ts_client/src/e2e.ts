// End-to-end check of the generated TypeScript client against a running SurveyMesh.
//
// Creates a survey, imports responses (client streaming), generates a report, follows
// WatchReport (server streaming) to its terminal event, then fetches the report and its
// JSON rendering. Prints one JSON line with what it saw, for the Python test to assert on.
//
// Environment: DELIVERY_ADDRESS, REPORTING_ADDRESS (host:port), TOKEN (a bearer JWT),
// RESPONSES (how many to import, default 40).

import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { DeliveryService, ImportResponsesRequestSchema } from "../gen/surveymesh/delivery/v1/delivery_service_pb.js";
import { AnswerSchema, ResponseSchema, type Response } from "../gen/surveymesh/delivery/v1/response_pb.js";
import { QuestionType, SurveySchema } from "../gen/surveymesh/delivery/v1/survey_pb.js";
import {
  RenderFormat,
  ReportEventType,
  ReportKind,
  ReportState,
  ReportView,
} from "../gen/surveymesh/reporting/v1/report_pb.js";
import { ReportingService } from "../gen/surveymesh/reporting/v1/reporting_service_pb.js";

function env(name: string, fallback?: string): string {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === "") throw new Error(`${name} is not set`);
  return value;
}

const token = env("TOKEN");
const count = Number(env("RESPONSES", "40"));

// Every call carries the bearer token, as the services require.
const bearer: Interceptor = (next) => async (req) => {
  req.header.set("authorization", `Bearer ${token}`);
  return next(req);
};

function transport(address: string) {
  return createGrpcTransport({ baseUrl: `http://${address}`, interceptors: [bearer] });
}

const delivery = createClient(DeliveryService, transport(env("DELIVERY_ADDRESS")));
const reporting = createClient(ReportingService, transport(env("REPORTING_ADDRESS")));

const TERMINAL = new Set([
  ReportEventType.COMPLETED,
  ReportEventType.FAILED,
  ReportEventType.CANCELLED,
]);

async function* batches(surveyId: string): AsyncIterable<ReturnType<typeof importMessage>> {
  const start = new Date("2025-03-01T09:00:00Z");
  let batch: Response[] = [];
  for (let i = 0; i < count; i++) {
    const started = new Date(start.getTime() + i * 3_600_000);
    batch.push(
      create(ResponseSchema, {
        id: `ts-${String(i).padStart(4, "0")}`,
        startTime: timestampFromDate(started),
        completeTime: timestampFromDate(new Date(started.getTime() + 120_000)),
        completed: true,
        attributes: { plan: i % 3 === 0 ? "pro" : "free" },
        answers: [
          create(AnswerSchema, { questionId: "recommend", value: { case: "nps", value: i % 11 } }),
          create(AnswerSchema, { questionId: "ease", value: { case: "rating", value: 1 + (i % 5) } }),
          create(AnswerSchema, {
            questionId: "why",
            value: { case: "text", value: i % 2 ? "Fast and friendly support" : "Too expensive for us" },
          }),
        ],
      }),
    );
    // Small batches on purpose: the stream really carries several messages.
    if (batch.length === 15) {
      yield importMessage(surveyId, batch);
      batch = [];
    }
  }
  if (batch.length) yield importMessage(surveyId, batch);
}

function importMessage(surveyId: string, responses: Response[]) {
  return create(ImportResponsesRequestSchema, { surveyId, responses });
}

async function main(): Promise<void> {
  const { survey } = await delivery.createSurvey(
    {
      survey: create(SurveySchema, {
        title: "TypeScript client check",
        questions: [
          { id: "recommend", text: "How likely are you to recommend us?", type: QuestionType.NPS },
          { id: "ease", text: "How easy was it?", type: QuestionType.RATING },
          { id: "why", text: "Why?", type: QuestionType.FREE_TEXT },
        ],
      }),
      requestId: `ts-${Date.now()}`,
    },
    { timeoutMs: 10_000 },
  );
  if (!survey) throw new Error("CreateSurvey returned no survey");

  const imported = await delivery.importResponses(batches(survey.id), { timeoutMs: 60_000 });

  const { report } = await reporting.generateReport(
    { surveyId: survey.id, kind: ReportKind.QUICK, requestId: `ts-${survey.id}` },
    { timeoutMs: 20_000 },
  );
  if (!report) throw new Error("GenerateReport returned no report");

  const sequences: number[] = [];
  let terminal = "";
  for await (const { event } of reporting.watchReport(
    { reportId: report.id, afterSequence: 0n },
    { timeoutMs: 100_000 },
  )) {
    if (!event) continue;
    sequences.push(Number(event.sequence));
    if (TERMINAL.has(event.type)) terminal = ReportEventType[event.type];
  }

  const full = await reporting.getReport(
    { reportId: report.id, view: ReportView.FULL },
    { timeoutMs: 10_000 },
  );
  let rendered = 0;
  let contentType = "";
  for await (const chunk of reporting.renderReport(
    { reportId: report.id, format: RenderFormat.JSON },
    { timeoutMs: 30_000 },
  )) {
    contentType ||= chunk.contentType;
    rendered += chunk.chunk.length;
  }

  // A typed error from the server: code and the ErrorInfo reason travel in the status.
  let missingCode = "";
  try {
    await reporting.getReport({ reportId: "00000000-0000-4000-8000-000000000000" }, { timeoutMs: 5_000 });
  } catch (err) {
    missingCode = Code[ConnectError.from(err).code];
  }

  console.log(
    JSON.stringify({
      survey_id: survey.id,
      accepted: Number(imported.acceptedCount),
      rejected: Number(imported.rejectedCount),
      report_id: report.id,
      sequences,
      terminal,
      state: ReportState[full.report?.state ?? ReportState.UNSPECIFIED],
      response_count: Number(full.report?.responseCount ?? 0),
      components: (full.report?.components ?? []).map((c) => c.type).sort(),
      rendered_bytes: rendered,
      content_type: contentType,
      missing_code: missingCode,
    }),
  );
}

main().catch((err: unknown) => {
  console.error(err instanceof ConnectError ? `${Code[err.code]}: ${err.rawMessage}` : err);
  process.exit(1);
});
