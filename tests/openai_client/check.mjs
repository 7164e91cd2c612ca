// Drives a running `switchyard serve` with the official `openai` Node.js client (as CI does), the
// twin of check.py for the other official SDK most applications use.
//
// Usage: node check.mjs http://127.0.0.1:PORT/v1 MODEL_ID   (with `openai` and `zod` installed
// from package.json beside it: `npm ci`)
// Checks: the model list, a plain chat, a routed chat and its headers, a streamed chat with usage,
// `reasoning_content` in a message and in stream deltas, log-probabilities, JSON mode, structured
// outputs through the client's zod helper, a tool call (required, streamed, and its result sent
// back), several choices, text completions (plain, streamed, and a scored prompt), and that errors
// map to the client's error classes. Exits non-zero on the first failure.

import assert from "node:assert/strict";
import OpenAI from "openai";
import { zodResponseFormat } from "openai/helpers/zod";
import { z } from "zod";

const [baseURL, model] = process.argv.slice(2);
if (!baseURL || !model) {
  console.error("usage: node check.mjs BASE_URL MODEL_ID");
  process.exit(2);
}

/** Polls /ready (the server may still be loading). */
async function waitReady(seconds = 120) {
  const root = baseURL.replace(/\/v1\/?$/, "");
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    try {
      const r = await fetch(`${root}/ready`);
      if (r.status === 200) return;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) throw new Error(`${root} not ready after ${seconds} s`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** Awaits `call` and asserts that it rejects with an instance of `errorClass`. */
async function expectError(what, errorClass, call) {
  try {
    await call();
  } catch (e) {
    assert.ok(e instanceof errorClass, `${what}: ${e}`);
    console.log(`${what} ->`, e.constructor.name, e.status);
    return;
  }
  assert.fail(`${what} did not raise ${errorClass.name}`);
}

const user = (content) => [{ role: "user", content }];

async function main() {
  await waitReady();
  const client = new OpenAI({ baseURL, apiKey: "unused" });

  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(model) && ids.includes("auto"), String(ids));

  let r = await client.chat.completions.create({
    model,
    messages: user("Say hello."),
    max_tokens: 8,
    temperature: 0,
  });
  assert.equal(r.choices[0].message.role, "assistant");
  assert.ok(r.usage.completion_tokens > 0, JSON.stringify(r.usage));
  console.log("plain:", JSON.stringify(r.choices[0].message.content));

  // Routed: the decision's headers reach the client beside the parsed answer.
  const { data: routed, response } = await client.chat.completions
    .create({
      model: "auto",
      messages: user("Solve for x: 3x + 7 = 22"),
      max_tokens: 8,
      temperature: 0,
    })
    .withResponse();
  const reasoning = response.headers.get("x-switchyard-reasoning");
  assert.ok(["on", "off"].includes(reasoning), String(reasoning));
  console.log(
    "routed:",
    response.headers.get("x-switchyard-category"),
    reasoning,
    routed.usage.completion_tokens_details?.reasoning_tokens,
  );

  let text = "";
  let usage = null;
  const stream = await client.chat.completions.create({
    model,
    messages: user("Count to three."),
    max_tokens: 8,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) text += c.delta.content ?? "";
  }
  assert.ok(usage && usage.completion_tokens > 0, JSON.stringify(usage));
  console.log("streamed:", JSON.stringify(text));

  // Thinking: `reasoning_content` (an extra field) on the message and on the stream's deltas.
  const thinking = {
    model,
    messages: user("Why is the sky blue?"),
    max_tokens: 16,
    temperature: 0,
    reasoning_effort: "low",
  };
  r = await client.chat.completions.create(thinking);
  assert.ok(r.usage.completion_tokens_details.reasoning_tokens > 0, JSON.stringify(r.usage));
  const thought = r.choices[0].message.reasoning_content;
  assert.ok(thought, JSON.stringify(r.choices[0].message));
  let streamedThought = "";
  for await (const chunk of await client.chat.completions.create({ ...thinking, stream: true })) {
    for (const c of chunk.choices) streamedThought += c.delta.reasoning_content ?? "";
  }
  assert.equal(streamedThought, thought);
  console.log("reasoning:", r.usage.completion_tokens_details.reasoning_tokens, "tokens");

  r = await client.chat.completions.create({
    model,
    messages: user("Say hello."),
    max_tokens: 4,
    temperature: 0,
    logprobs: true,
    top_logprobs: 2,
  });
  const entries = r.choices[0].logprobs.content;
  assert.ok(entries.length >= 1, JSON.stringify(entries));
  for (const e of entries) {
    assert.ok(e.logprob <= 0 && e.top_logprobs.length === 2, JSON.stringify(e));
  }
  assert.equal(entries[0].top_logprobs[0].token, entries[0].token);
  console.log("logprobs:", entries.map((e) => [e.token, Number(e.logprob.toFixed(3))]));

  await expectError("unknown model", OpenAI.NotFoundError, () =>
    client.chat.completions.create({ model: "no-such-model", messages: user("hi") }),
  );

  // JSON mode, greedy (see check.py for why not sampled).
  r = await client.chat.completions.create({
    model,
    messages: user("Describe a fictional person as a JSON object with name, age and city."),
    max_tokens: 120,
    temperature: 0,
    response_format: { type: "json_object" },
  });
  assert.equal(r.choices[0].finish_reason, "stop");
  const person = JSON.parse(r.choices[0].message.content);
  assert.ok(person !== null && typeof person === "object" && !Array.isArray(person));
  console.log("json mode:", person);

  // Structured outputs: the client turns a zod schema into a strict JSON schema and parses the
  // answer back through it.
  const Person = z.object({ name: z.string(), age: z.number().int(), city: z.string() });
  const parsed = await client.chat.completions.parse({
    model,
    messages: user("Describe a fictional person with their name, age and city."),
    max_tokens: 120,
    temperature: 0.7,
    seed: 1,
    response_format: zodResponseFormat(Person, "person"),
  });
  assert.equal(parsed.choices[0].finish_reason, "stop");
  const structured = parsed.choices[0].message.parsed;
  assert.deepEqual(Person.parse(structured), structured);
  console.log("json schema:", structured);
  await expectError("unenforceable schema", OpenAI.BadRequestError, () =>
    client.chat.completions.create({
      model,
      messages: user("hi"),
      response_format: {
        type: "json_schema",
        json_schema: { name: "x", schema: { $ref: "#/$defs/nowhere" } },
      },
    }),
  );

  // Tool calling: a required call is a valid call; streamed, the same call; its result goes back.
  const tools = [
    {
      type: "function",
      function: {
        name: "get_weather",
        description: "Current weather in a city",
        parameters: {
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
          additionalProperties: false,
        },
      },
    },
  ];
  const ask = user("What is the weather like in Paris today?");
  r = await client.chat.completions.create({
    model,
    messages: ask,
    max_tokens: 60,
    temperature: 0,
    tools,
    tool_choice: "required",
  });
  const choice = r.choices[0];
  assert.equal(choice.finish_reason, "tool_calls");
  assert.equal(choice.message.tool_calls.length, 1);
  const call = choice.message.tool_calls[0];
  assert.equal(call.function.name, "get_weather");
  assert.equal(typeof JSON.parse(call.function.arguments).city, "string");
  console.log("tool call:", call.function.name, call.function.arguments);
  const streamedCalls = new Map();
  for await (const chunk of await client.chat.completions.create({
    model,
    messages: ask,
    max_tokens: 60,
    temperature: 0,
    tools,
    tool_choice: { type: "function", function: { name: "get_weather" } },
    parallel_tool_calls: false,
    stream: true,
  })) {
    for (const c of chunk.choices) {
      for (const d of c.delta.tool_calls ?? []) {
        const entry = streamedCalls.get(d.index) ?? { name: "", arguments: "" };
        entry.name += d.function?.name ?? "";
        entry.arguments += d.function?.arguments ?? "";
        streamedCalls.set(d.index, entry);
      }
    }
  }
  assert.deepEqual(
    [...streamedCalls.values()].map((c) => c.name),
    ["get_weather"],
  );
  assert.deepEqual(
    JSON.parse(streamedCalls.get(0).arguments),
    JSON.parse(call.function.arguments),
  );
  r = await client.chat.completions.create({
    model,
    max_tokens: 40,
    temperature: 0,
    tools,
    messages: [
      ...ask,
      choice.message,
      { role: "tool", tool_call_id: call.id, content: "22 C and sunny" },
    ],
  });
  assert.equal(typeof r.choices[0].message.content, "string");
  console.log("after the tool result:", JSON.stringify(r.choices[0].message.content.slice(0, 60)));

  // Several choices, parsed and streamed by index.
  const colours = {
    model,
    messages: user("Name a colour."),
    max_tokens: 6,
    temperature: 1.0,
    seed: 3,
    n: 2,
  };
  r = await client.chat.completions.create(colours);
  assert.deepEqual(
    r.choices.map((c) => c.index),
    [0, 1],
  );
  const streamedChoices = ["", ""];
  for await (const chunk of await client.chat.completions.create({ ...colours, stream: true })) {
    for (const c of chunk.choices) streamedChoices[c.index] += c.delta.content ?? "";
  }
  assert.ok(r.choices.every((c) => c.message.content) && streamedChoices.every(Boolean));
  console.log(
    "n=2:",
    r.choices.map((c) => c.message.content),
    "streamed:",
    streamedChoices,
  );
  await expectError("n=0", OpenAI.BadRequestError, () =>
    client.chat.completions.create({ model, messages: user("hi"), n: 0 }),
  );

  // Text completions (the legacy API): plain, streamed, and a prompt scored with echo + logprobs.
  const prompt = "The capital of France is";
  const completion = await client.completions.create({
    model,
    prompt,
    max_tokens: 6,
    temperature: 0,
    logprobs: 2,
  });
  const completed = completion.choices[0].text;
  assert.ok(completion.object === "text_completion" && completed);
  assert.equal(completion.choices[0].logprobs.tokens.join(""), completed);
  let streamedCompletion = "";
  for await (const chunk of await client.completions.create({
    model,
    prompt,
    max_tokens: 6,
    temperature: 0,
    stream: true,
  })) {
    streamedCompletion += chunk.choices[0]?.text ?? "";
  }
  assert.equal(streamedCompletion, completed);
  const scored = await client.completions.create({
    model,
    prompt: `${prompt} Paris`,
    max_tokens: 0,
    echo: true,
    logprobs: 1,
  });
  const lp = scored.choices[0].logprobs;
  assert.equal(scored.choices[0].text, `${prompt} Paris`);
  assert.equal(lp.token_logprobs[0], null);
  assert.ok(lp.token_logprobs.slice(1).every((x) => x <= 0));
  console.log(
    "completions:",
    JSON.stringify(completed),
    "streamed the same; scored:",
    lp.token_logprobs.slice(1).map((x) => Number(x.toFixed(2))),
  );
  console.log("openai node client: all checks passed");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
