// The Node example against a live Tandem whose model `echo` (the mock) echoes the last
// user message one chunk per word: TANDEM_TARGET is its gRPC address, TANDEM_API_KEY a
// key it accepts (it requires one). tests/test_typescript_client.py starts that server
// and runs this file with `node --test`.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { promisify } from "node:util";

import { chatClient, streamChat } from "../examples/stream-chat.mjs";

const target = process.env.TANDEM_TARGET;
const key = process.env.TANDEM_API_KEY;
assert.ok(target && key, "set TANDEM_TARGET and TANDEM_API_KEY (a live Tandem's)");

const example = fileURLToPath(new URL("../examples/stream-chat.mjs", import.meta.url));

/** The example run as a user runs it: exit code, stdout and stderr. */
async function run(prompt, env) {
  const environment = { ...process.env, TANDEM_TARGET: target, TANDEM_MODEL: "echo", ...env };
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [example, prompt], {
      env: environment,
      timeout: 30_000,
    });
    return { code: 0, stdout, stderr };
  } catch (failure) {
    if (typeof failure.code !== "number") throw failure;
    return { code: failure.code, stdout: failure.stdout, stderr: failure.stderr };
  }
}

test("the stream arrives a word a chunk, the echo of the prompt, usage last", async () => {
  const chunks = [];
  for await (const chunk of streamChat(chatClient(target), "Hello from Node", { model: "echo", key })) {
    chunks.push(chunk);
  }
  const pieces = chunks.map((chunk) => chunk.choices[0]?.delta?.content ?? "");
  assert.deepEqual(pieces.filter(Boolean), ["Hello ", "from ", "Node"]);
  const last = chunks.at(-1);
  assert.equal(last.choices[0]?.finishReason, "stop");
  assert.ok(chunks.slice(0, -1).every((chunk) => chunk.usage === undefined));
  const { promptTokens, completionTokens, totalTokens } = last.usage;
  assert.deepEqual([promptTokens, completionTokens, totalTokens], [3, 3, 6]);
});

test("the example prints the streamed answer, then the tokens", async () => {
  const done = await run("Hello from Node", { TANDEM_API_KEY: key });
  assert.deepEqual(done, { code: 0, stdout: "Hello from Node\n[6 tokens]\n", stderr: "" });
});

test("without a key the example says UNAUTHENTICATED in one line", async () => {
  const done = await run("Hello", { TANDEM_API_KEY: "" });
  assert.equal(done.code, 1);
  assert.equal(done.stdout, "");
  assert.match(done.stderr, /^UNAUTHENTICATED: [^\n]+\n$/);
});

test("an unknown model is NOT_FOUND, named", async () => {
  const done = await run("Hello", { TANDEM_API_KEY: key, TANDEM_MODEL: "ghost" });
  assert.deepEqual(done, { code: 1, stdout: "", stderr: "NOT_FOUND: model 'ghost' not found\n" });
});
