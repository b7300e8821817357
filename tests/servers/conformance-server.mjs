// An MCP server (TypeScript SDK, streamable HTTP at /mcp) that implements what the server
// scenarios of @modelcontextprotocol/conformance ask for (`conformance list --server`; each
// scenario's requirements are in its description). server-everything fails most of those
// scenarios because it lacks their tools; against this server they pass directly, so a
// comparison through a proxy covers progress and logging on SSE answers, sampling and
// elicitation (server → client requests and the client's POSTed answers), stream
// resumption with Last-Event-ID, subscriptions, and the DNS-rebinding check.
//
//   PORT=3002 node tests/servers/conformance-server.mjs      (listens on 127.0.0.1 only)

import { randomUUID } from "node:crypto";
import { createRequire } from "node:module";

// The packages live in .tools/npm (scripts/setup.sh), not next to this file.
const require = createRequire(new URL("../../.tools/npm/package.json", import.meta.url));
const { Server } = require("@modelcontextprotocol/sdk/server/index.js");
const { StreamableHTTPServerTransport } = require("@modelcontextprotocol/sdk/server/streamableHttp.js");
const {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
} = require("@modelcontextprotocol/sdk/types.js");
const express = require("express");

const PORT = Number(process.env.PORT || 3002);
const HOST = "127.0.0.1";

// 1x1 red PNG, and a WAV holding 4 silent 8-bit samples.
const PNG =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const WAV = Buffer.concat([
  Buffer.from("RIFF"), u32(40), Buffer.from("WAVEfmt "), u32(16), u16(1), u16(1), u32(8000), u32(8000),
  u16(1), u16(8), Buffer.from("data"), u32(4), Buffer.from([128, 128, 128, 128]),
]).toString("base64");

function u32(n) { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; }
function u16(n) { const b = Buffer.alloc(2); b.writeUInt16LE(n); return b; }
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const text = (t) => ({ type: "text", text: t });

const noArgs = { type: "object", properties: {} };

const TOOLS = [
  { name: "test_simple_text", description: "Returns simple text", inputSchema: noArgs },
  { name: "test_image_content", description: "Returns an image", inputSchema: noArgs },
  { name: "test_audio_content", description: "Returns audio", inputSchema: noArgs },
  { name: "test_embedded_resource", description: "Returns an embedded resource", inputSchema: noArgs },
  { name: "test_multiple_content_types", description: "Returns text, image and resource", inputSchema: noArgs },
  { name: "test_tool_with_logging", description: "Logs three messages while running", inputSchema: noArgs },
  { name: "test_error_handling", description: "Always fails", inputSchema: noArgs },
  { name: "test_tool_with_progress", description: "Reports progress 0, 50, 100", inputSchema: noArgs },
  {
    name: "test_sampling",
    description: "Asks the client's LLM",
    inputSchema: { type: "object", properties: { prompt: { type: "string" } }, required: ["prompt"] },
  },
  {
    name: "test_elicitation",
    description: "Asks the user",
    inputSchema: { type: "object", properties: { message: { type: "string" } }, required: ["message"] },
  },
  { name: "test_elicitation_sep1034_defaults", description: "Elicitation with defaults", inputSchema: noArgs },
  { name: "test_elicitation_sep1330_enums", description: "Elicitation with enum variants", inputSchema: noArgs },
  { name: "test_reconnection", description: "Closes its SSE stream mid-call, answers after the client resumes", inputSchema: noArgs },
  {
    name: "json_schema_2020_12_tool",
    description: "Tool with JSON Schema 2020-12 features",
    inputSchema: {
      $schema: "https://json-schema.org/draft/2020-12/schema",
      type: "object",
      $defs: {
        address: { type: "object", properties: { street: { type: "string" }, city: { type: "string" } } },
      },
      properties: { name: { type: "string" }, address: { $ref: "#/$defs/address" } },
      additionalProperties: false,
    },
  },
];

async function callTool(name, args, extra, request) {
  switch (name) {
    case "test_simple_text":
      return { content: [text("This is a simple text response for testing.")] };
    case "test_image_content":
      return { content: [{ type: "image", data: PNG, mimeType: "image/png" }] };
    case "test_audio_content":
      return { content: [{ type: "audio", data: WAV, mimeType: "audio/wav" }] };
    case "test_embedded_resource":
      return {
        content: [{
          type: "resource",
          resource: { uri: "test://embedded-resource", mimeType: "text/plain", text: "This is an embedded resource content." },
        }],
      };
    case "test_multiple_content_types":
      return {
        content: [
          text("Multiple content types test:"),
          { type: "image", data: PNG, mimeType: "image/png" },
          {
            type: "resource",
            resource: {
              uri: "test://mixed-content-resource",
              mimeType: "application/json",
              text: JSON.stringify({ test: "data", value: 123 }),
            },
          },
        ],
      };
    case "test_tool_with_logging": {
      for (const [i, data] of ["Tool execution started", "Tool processing data", "Tool execution completed"].entries()) {
        if (i > 0) await sleep(50);
        await extra.sendNotification({ method: "notifications/message", params: { level: "info", data } });
      }
      return { content: [text("Logging tool finished")] };
    }
    case "test_error_handling":
      return { isError: true, content: [text("This tool intentionally returns an error for testing")] };
    case "test_tool_with_progress": {
      const progressToken = request.params._meta?.progressToken;
      for (const [i, progress] of [0, 50, 100].entries()) {
        if (i > 0) await sleep(50);
        if (progressToken !== undefined) {
          await extra.sendNotification({ method: "notifications/progress", params: { progressToken, progress, total: 100 } });
        }
      }
      return { content: [text("Progress tool finished")] };
    }
    case "test_sampling": {
      const result = await extra.sendRequest(
        {
          method: "sampling/createMessage",
          params: { messages: [{ role: "user", content: text(args.prompt) }], maxTokens: 100 },
        },
        CreateMessageResultSchema,
      );
      return { content: [text(`LLM response: ${result.content?.text ?? JSON.stringify(result.content)}`)] };
    }
    case "test_elicitation":
      return elicit(extra, args.message, {
        type: "object",
        properties: {
          username: { type: "string", description: "User's response" },
          email: { type: "string", description: "User's email address" },
        },
        required: ["username", "email"],
      }, "User response");
    case "test_elicitation_sep1034_defaults":
      return elicit(extra, "Please review the defaults", {
        type: "object",
        properties: {
          name: { type: "string", default: "John Doe" },
          age: { type: "integer", default: 30 },
          score: { type: "number", default: 95.5 },
          status: { type: "string", enum: ["active", "inactive", "pending"], default: "active" },
          verified: { type: "boolean", default: true },
        },
      }, "Elicitation completed");
    case "test_elicitation_sep1330_enums":
      return elicit(extra, "Please choose", {
        type: "object",
        properties: {
          untitledSingle: { type: "string", enum: ["option1", "option2", "option3"] },
          titledSingle: {
            type: "string",
            oneOf: [
              { const: "value1", title: "First Option" },
              { const: "value2", title: "Second Option" },
              { const: "value3", title: "Third Option" },
            ],
          },
          legacyEnum: {
            type: "string",
            enum: ["opt1", "opt2", "opt3"],
            enumNames: ["Option One", "Option Two", "Option Three"],
          },
          untitledMulti: { type: "array", items: { type: "string", enum: ["option1", "option2", "option3"] } },
          titledMulti: {
            type: "array",
            items: {
              anyOf: [
                { const: "value1", title: "First Choice" },
                { const: "value2", title: "Second Choice" },
                { const: "value3", title: "Third Choice" },
              ],
            },
          },
        },
      }, "Elicitation completed");
    case "test_reconnection":
      // Close this request's SSE stream (the client then polls: GET with Last-Event-ID),
      // and answer once it had time to come back; the answer is replayed from the event store.
      await sleep(100);
      extra.closeSSEStream?.();
      await sleep(400);
      return { content: [text("Reconnection test completed")] };
    case "json_schema_2020_12_tool":
      return { content: [text(`Hello ${args?.name ?? "nobody"}`)] };
    default:
      return { isError: true, content: [text(`Unknown tool: ${name}`)] };
  }
}

async function elicit(extra, message, requestedSchema, label) {
  const result = await extra.sendRequest(
    { method: "elicitation/create", params: { message, requestedSchema } },
    ElicitResultSchema,
  );
  return { content: [text(`${label}: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`)] };
}

const RESOURCES = [
  { uri: "test://static-text", name: "static-text", description: "A static text resource", mimeType: "text/plain" },
  { uri: "test://static-binary", name: "static-binary", description: "A static PNG", mimeType: "image/png" },
  { uri: "test://watched-resource", name: "watched-resource", description: "A resource to subscribe to", mimeType: "text/plain" },
];

function readResource(uri) {
  if (uri === "test://static-text") {
    return [{ uri, mimeType: "text/plain", text: "This is the content of the static text resource." }];
  }
  if (uri === "test://static-binary") return [{ uri, mimeType: "image/png", blob: PNG }];
  if (uri === "test://watched-resource") return [{ uri, mimeType: "text/plain", text: "Watched resource content." }];
  const m = /^test:\/\/template\/([^/]+)\/data$/.exec(uri);
  if (m) {
    return [{ uri, mimeType: "application/json", text: JSON.stringify({ id: m[1], templateTest: true, data: `Data for ID: ${m[1]}` }) }];
  }
  throw new Error(`Unknown resource: ${uri}`);
}

const PROMPTS = [
  { name: "test_simple_prompt", description: "A prompt without arguments" },
  {
    name: "test_prompt_with_arguments",
    description: "A prompt with two arguments",
    arguments: [
      { name: "arg1", description: "First test argument", required: true },
      { name: "arg2", description: "Second test argument", required: true },
    ],
  },
  {
    name: "test_prompt_with_embedded_resource",
    description: "A prompt embedding a resource",
    arguments: [{ name: "resourceUri", description: "URI of the resource to embed", required: true }],
  },
  { name: "test_prompt_with_image", description: "A prompt with an image" },
];

function getPrompt(name, args = {}) {
  const user = (content) => ({ role: "user", content });
  switch (name) {
    case "test_simple_prompt":
      return { messages: [user(text("This is a simple prompt for testing."))] };
    case "test_prompt_with_arguments":
      return { messages: [user(text(`Prompt with arguments: arg1='${args.arg1}', arg2='${args.arg2}'`))] };
    case "test_prompt_with_embedded_resource":
      return {
        messages: [
          user({ type: "resource", resource: { uri: args.resourceUri, mimeType: "text/plain", text: "Embedded resource content for testing." } }),
          user(text("Please process the embedded resource above.")),
        ],
      };
    case "test_prompt_with_image":
      return { messages: [user({ type: "image", data: PNG, mimeType: "image/png" }), user(text("Please analyze the image above."))] };
    default:
      throw new Error(`Unknown prompt: ${name}`);
  }
}

function createServer() {
  const server = new Server(
    { name: "gatehouse-conformance-server", version: "1.0.0" },
    {
      capabilities: {
        tools: {},
        resources: { subscribe: true },
        prompts: {},
        logging: {},
        completions: {},
      },
    },
  );
  const subscriptions = new Set();
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) =>
    callTool(request.params.name, request.params.arguments ?? {}, extra, request));
  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources: RESOURCES }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [{ uriTemplate: "test://template/{id}/data", name: "template", description: "Data by id", mimeType: "application/json" }],
  }));
  server.setRequestHandler(ReadResourceRequestSchema, async (request) => ({ contents: readResource(request.params.uri) }));
  server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    subscriptions.add(request.params.uri);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    subscriptions.delete(request.params.uri);
    return {};
  });
  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));
  server.setRequestHandler(GetPromptRequestSchema, async (request) => getPrompt(request.params.name, request.params.arguments));
  server.setRequestHandler(CompleteRequestSchema, async (request) => {
    const prefix = request.params.argument?.value ?? "";
    const values = ["paris", "park", "party", "test", "testing"].filter((v) => v.startsWith(prefix));
    return { completion: { values, total: values.length, hasMore: false } };
  });
  server.setRequestHandler(SetLevelRequestSchema, async () => ({}));
  return server;
}

class EventStore {
  events = new Map(); // eventId → {streamId, message}

  async storeEvent(streamId, message) {
    const eventId = `${streamId}.${randomUUID()}`;
    this.events.set(eventId, { streamId, message });
    return eventId;
  }

  async getStreamIdForEventId(eventId) {
    return this.events.get(eventId)?.streamId;
  }

  async replayEventsAfter(lastEventId, { send }) {
    const streamId = this.events.get(lastEventId)?.streamId;
    if (!streamId) return "";
    let after = false;
    for (const [eventId, event] of this.events) {
      if (eventId === lastEventId) after = true;
      else if (after && event.streamId === streamId) await send(eventId, event.message);
    }
    return streamId;
  }
}

// DNS-rebinding protection on both headers: Host (direct clients) and Origin (browsers; it
// also survives proxies that rewrite Host).
const LOCAL = new Set(["127.0.0.1", "localhost", "[::1]"]);
function localOnly(req, res, next) {
  const hostOk = (value) => {
    try {
      return LOCAL.has(new URL(value).hostname);
    } catch {
      return false;
    }
  };
  const origin = req.headers.origin;
  if (!hostOk(`http://${req.headers.host}`) || (origin && !hostOk(origin))) {
    res.status(403).json({ jsonrpc: "2.0", error: { code: -32000, message: "Forbidden host or origin" }, id: null });
    return;
  }
  next();
}

const transports = new Map();
const app = express();
app.use(localOnly);
app.use(express.json({ limit: "4mb" }));

app.all("/mcp", async (req, res) => {
  const sessionId = req.headers["mcp-session-id"];
  let transport = sessionId ? transports.get(sessionId) : undefined;
  if (!transport) {
    if (sessionId || req.method !== "POST" || req.body?.method !== "initialize") {
      res.status(sessionId ? 404 : 400).json({
        jsonrpc: "2.0",
        error: { code: -32000, message: sessionId ? "Session not found" : "Bad Request: no session" },
        id: null,
      });
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new EventStore(),
      retryInterval: 200,
      onsessioninitialized: (id) => transports.set(id, transport),
    });
    transport.onclose = () => transport.sessionId && transports.delete(transport.sessionId);
    await createServer().connect(transport);
  }
  await transport.handleRequest(req, res, req.body);
});

app.listen(PORT, HOST, () => console.error(`Conformance server listening on http://${HOST}:${PORT}/mcp`));
