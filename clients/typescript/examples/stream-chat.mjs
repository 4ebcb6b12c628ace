#!/usr/bin/env node
// Streams a chat from Tandem over gRPC (HTTP/2) with Connect, printing the answer as it
// arrives and then the tokens it used:
//
//   node examples/stream-chat.mjs "Hello from Node"
//
// TANDEM_TARGET is the gRPC address (default 127.0.0.1:50051, `make run`'s; an
// https:// URL for TLS), TANDEM_API_KEY the key when the gateway asks for one,
// TANDEM_MODEL the model (default: the key's tier default).
import { pathToFileURL } from "node:url";

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { ChatService } from "../gen/tandem/v1/chat_pb.js";

/**
 * A ChatService client over one HTTP/2 connection to `target` ("host:port", or a URL).
 *
 * @param {string} target
 */
export function chatClient(target) {
  const baseUrl = /^https?:\/\//.test(target) ? target : `http://${target}`;
  return createClient(ChatService, createGrpcTransport({ baseUrl }));
}

/**
 * The chunks of a chat of one user message, as the gateway streams them; the last one
 * carries `usage`.
 *
 * @param {ReturnType<typeof chatClient>} client
 * @param {string} text
 * @param {{ model?: string, key?: string, signal?: AbortSignal }} [options]
 * @returns {AsyncIterable<import("../gen/tandem/v1/chat_pb.js").ChatCompletionChunk>}
 */
export function streamChat(client, text, { model = "", key, signal } = {}) {
  const headers = key ? { authorization: `Bearer ${key}` } : {};
  const request = { model, messages: [{ role: "user", content: text }] };
  return client.streamChatCompletion(request, { headers, signal });
}

/** gRPC's spelling of a status code (NOT_FOUND), as grpcurl and `tandem chat` print it. */
function codeName(code) {
  return Code[code].replace(/(?<=[a-z])(?=[A-Z])/g, "_").toUpperCase();
}

async function main(argv, env) {
  if (argv.length !== 1) {
    process.stderr.write('usage: node examples/stream-chat.mjs "PROMPT"\n');
    return 2;
  }
  const client = chatClient(env.TANDEM_TARGET || "127.0.0.1:50051");
  const options = { model: env.TANDEM_MODEL, key: env.TANDEM_API_KEY };
  try {
    for await (const chunk of streamChat(client, argv[0], options)) {
      process.stdout.write(chunk.choices[0]?.delta?.content ?? "");
      if (chunk.usage) {
        process.stdout.write(`\n[${chunk.usage.totalTokens} tokens]\n`);
      }
    }
  } catch (error) {
    const failure = ConnectError.from(error);
    process.stderr.write(`${codeName(failure.code)}: ${failure.rawMessage}\n`);
    return 1;
  }
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main(process.argv.slice(2), process.env);
}
