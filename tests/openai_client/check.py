#!/usr/bin/env python3
"""Drives a running `switchyard serve` with the official `openai` Python client (as CI does).

Usage: python tests/openai_client/check.py http://127.0.0.1:PORT/v1 MODEL_ID
Checks: list models, a plain chat, a routed chat, a streamed chat with usage, `reasoning_content` in a
message and in stream deltas, log-probabilities, JSON mode, several choices (`n`), the prompt tokens a
repeated request found in the prefix cache (`usage.prompt_tokens_details.cached_tokens`), and that errors map
to the client's exception types. Exits non-zero on the first failure.
"""

import json
import sys
import time
import urllib.request

import openai
import pydantic


def wait_ready(base_url, seconds=120):
    """Polls /ready (the server may still be loading)."""
    root = base_url.rsplit("/v1", 1)[0]
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{root}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"{root} not ready after {seconds} s")
        time.sleep(0.5)


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    wait_ready(base_url)
    client = openai.OpenAI(base_url=base_url, api_key="unused")

    ids = [m.id for m in client.models.list()]
    assert model in ids and "auto" in ids, ids

    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens > 0, r.usage
    print("plain:", repr(r.choices[0].message.content))

    # The same long prompt twice: the second finds all but its tail in the prefix cache.
    story = [{"role": "user", "content": "Tell me about the history of railways. " * 8}]
    first = client.chat.completions.create(model=model, messages=story, max_tokens=2, temperature=0)
    again = client.chat.completions.create(model=model, messages=story, max_tokens=2, temperature=0)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < again.usage.prompt_tokens, again.usage
    assert again.choices[0].message.content == first.choices[0].message.content
    print("prefix cache:", cached, "of", again.usage.prompt_tokens, "prompt tokens cached")

    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Solve for x: 3x + 7 = 22"}],
        max_tokens=8,
        temperature=0,
    )
    assert raw.headers["x-switchyard-reasoning"] in ("on", "off")
    routed = raw.parse()
    print("routed:", raw.headers["x-switchyard-category"], raw.headers["x-switchyard-reasoning"],
          routed.usage.completion_tokens_details.reasoning_tokens)

    text, usage = "", None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
    assert usage is not None and usage.completion_tokens > 0, usage
    print("streamed:", repr(text))

    # Thinking: `reasoning_content` reaches the client (an extra field on the message and deltas).
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        max_tokens=16,
        temperature=0,
        reasoning_effort="low",
    )
    assert r.usage.completion_tokens_details.reasoning_tokens > 0, r.usage
    assert getattr(r.choices[0].message, "reasoning_content", None), r.choices[0].message
    thought = ""
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        max_tokens=16,
        temperature=0,
        reasoning_effort="low",
        stream=True,
    ):
        for c in chunk.choices:
            thought += getattr(c.delta, "reasoning_content", None) or ""
    assert thought == r.choices[0].message.reasoning_content, (thought, r.choices[0].message)
    print("reasoning:", r.usage.completion_tokens_details.reasoning_tokens, "tokens")

    # Log-probabilities, parsed into the client's own types.
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    entries = r.choices[0].logprobs.content
    assert len(entries) >= 1 and all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries), entries
    assert entries[0].top_logprobs[0].token == entries[0].token, entries[0]
    print("logprobs:", [(e.token, round(e.logprob, 3)) for e in entries])

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    except openai.NotFoundError as e:
        print("unknown model ->", type(e).__name__, e.status_code)
    else:
        raise AssertionError("an unknown model did not raise NotFoundError")

    # JSON mode: the answer is one JSON object. Greedy: a sampled answer may go on listing (JSON mode
    # does not make an object end), and which one does changes with the last bits of the logits
    # (seed 1 at 0.7, which used to stop, ran past 300 tokens after the AMX kernels and the
    # vectorised SwiGLU); the greedy one is the same short object with every kernel set.
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a fictional person as a JSON object with name, age and city."}],
        max_tokens=120, temperature=0, response_format={"type": "json_object"},
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    person = json.loads(r.choices[0].message.content)
    assert isinstance(person, dict), person
    print("json mode:", person)

    # Structured outputs: the client turns a Pydantic model into a strict JSON schema and parses
    # the answer back into the model.
    class Person(pydantic.BaseModel):
        name: str
        age: int
        city: str

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(
        model=model,
        messages=[{"role": "user", "content": "Describe a fictional person with their name, age and city."}],
        max_tokens=120, temperature=0.7, seed=1, response_format=Person,
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    person = r.choices[0].message.parsed
    assert isinstance(person, Person), r.choices[0].message
    print("json schema:", person)
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/nowhere"}}},
        )
    except openai.BadRequestError as e:
        print("unenforceable schema ->", type(e).__name__, e.status_code)
    else:
        raise AssertionError("an unenforceable schema did not raise BadRequestError")

    # Tool calling: a required call is a valid call; its result goes back in the next turn.
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": False}}}]
    ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    # `parallel_tool_calls` unsaid: SmolLM2's template renders no calls, so the server allows one
    # (a model without parallel calls would repeat its call until max_tokens).
    r = client.chat.completions.create(
        model=model, messages=ask, max_tokens=60, temperature=0, tools=tools,
        tool_choice="required",
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert len(choice.message.tool_calls) == 1, choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather", call
    city = json.loads(call.function.arguments)["city"]
    assert isinstance(city, str), call
    print("tool call:", call.function.name, call.function.arguments)
    streamed_calls = {}
    for chunk in client.chat.completions.create(
        model=model, messages=ask, max_tokens=60, temperature=0, tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False, stream=True,
    ):
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                entry = streamed_calls.setdefault(d.index, {"name": "", "arguments": ""})
                entry["name"] += d.function.name or ""
                entry["arguments"] += d.function.arguments or ""
    assert [c["name"] for c in streamed_calls.values()] == ["get_weather"], streamed_calls
    assert json.loads(streamed_calls[0]["arguments"]) == json.loads(call.function.arguments)
    r = client.chat.completions.create(
        model=model, max_tokens=40, temperature=0, tools=tools,
        messages=ask + [choice.message.model_dump(exclude_none=True),
                        {"role": "tool", "tool_call_id": call.id, "content": "22 C and sunny"}],
    )
    assert isinstance(r.choices[0].message.content, str), r.choices[0]
    print("after the tool result:", repr(r.choices[0].message.content[:60]))

    # Several choices, parsed and streamed by index.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=6, temperature=1.0, seed=3, n=2,
    )
    assert [c.index for c in r.choices] == [0, 1], r.choices
    texts = [c.message.content for c in r.choices]
    streamed = ["", ""]
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=6, temperature=1.0, seed=3, n=2, stream=True,
    ):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    # Not compared text for text: a seeded sample can flip where two sequences' batching differs
    # between the calls (the engine's tests check seeds on the f32 fixtures).
    assert all(texts) and all(streamed), (texts, streamed)
    print("n=2:", texts, "streamed:", streamed)

    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=0)
    except openai.BadRequestError as e:
        print("n=0 ->", type(e).__name__, e.status_code)
    else:
        raise AssertionError("n=0 did not raise BadRequestError")

    # Text completions (the legacy API): plain, streamed, and a prompt scored with echo + logprobs.
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6,
                                  temperature=0, logprobs=2)
    text = r.choices[0].text
    assert r.object == "text_completion" and text, r
    assert "".join(r.choices[0].logprobs.tokens) == text, r.choices[0].logprobs
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True)
        if c.choices)
    assert streamed == text, (streamed, text)
    scored = client.completions.create(model=model, prompt="The capital of France is Paris",
                                       max_tokens=0, echo=True, logprobs=1)
    lp = scored.choices[0].logprobs
    assert scored.choices[0].text == "The capital of France is Paris", scored
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:]), lp
    print("completions:", repr(text), "streamed the same; scored:",
          [round(x, 2) for x in lp.token_logprobs[1:]])
    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
