#!/usr/bin/env python3
"""Drives a running `distill serve` with the official OpenAI Python client (a client we did not
write), as an app that only swapped its base URL would. Called by serve_openai_client.sh.

Checks: models.list names the student; chat completions return one of the task's labels plus the
`distill` object; a repeat is answered from the cache; JSON mode; streaming (one content chunk, a
stop chunk, the usage chunk, end of stream); errors raise the client's typed exceptions (404 unknown
model, 401 bad key, 400 bad request) with OpenAI's error body. With --spans-model, an extraction
tagger too: the context passed as `extra_body`, spans whose offsets cover their text, the reply
content `{"spans": [...]}`, a repeat from the cache, another context not, an unknown context field a
400 naming it. Exits 1 on any mismatch.
"""
import argparse
import json
import sys

import openai
from openai import OpenAI

ap = argparse.ArgumentParser()
ap.add_argument("--base-url", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--key-file", required=True, help="the API key (read from a file, never printed)")
ap.add_argument("--labels", required=True, help="categories.json")
ap.add_argument("--texts", required=True, help="one input per line")
ap.add_argument("--spans-model", help="a served extraction tagger (Restaurant-8k)")
ap.add_argument("--spans-rows", help="JSONL turns with text, requested_slots and gold spans")
a = ap.parse_args()

key = open(a.key_file).read().strip()
labels = set(json.load(open(a.labels)))
texts = [t for t in open(a.texts).read().splitlines() if t.strip()]
client = OpenAI(base_url=a.base_url, api_key=key, max_retries=0, timeout=30)
failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)
    return ok


def distill_of(obj):
    extra = getattr(obj, "model_extra", None) or {}
    return extra.get("distill") or obj.model_dump().get("distill")


# models.list
models = [m.id for m in client.models.list()]
check(a.model in models, f"models.list contains {a.model!r} (got {models})")

# Chat completions: a valid label and the distill object.
sources = {}
first = None
for text in texts:
    r = client.chat.completions.create(
        model=a.model, messages=[{"role": "system", "content": "Classify."},
                                 {"role": "user", "content": text}])
    label = r.choices[0].message.content
    d = distill_of(r)
    ok = (label in labels and r.object == "chat.completion" and r.model == a.model
          and r.choices[0].finish_reason == "stop" and isinstance(d, dict)
          and d.get("label") == label and d.get("source") in ("student", "teacher")
          and 0.0 <= d.get("confidence", -1) <= 1.0 and r.usage.prompt_tokens > 0)
    if not check(ok, f"chat completion for {text[:40]!r}: {label!r} {d}"):
        continue
    sources[d["source"]] = sources.get(d["source"], 0) + 1
    if d["source"] == "teacher":
        check(d["cost_usd"] > 0 and d.get("student_label") in labels,
              f"an escalated answer is priced and names the student's label: {d}")
    else:
        check(d["cost_usd"] == 0, f"a student answer costs nothing: {d}")
    first = first or (text, label)
print(f"      sources over {len(texts)} inputs: {sources}")
check(sum(sources.values()) == len(texts), "every input answered")

# A repeat (different spacing) comes from the cache with the same label.
text, label = first
r = client.chat.completions.create(model=a.model,
                                   messages=[{"role": "user", "content": "  " + text + "  "}])
d = distill_of(r)
check(d["source"] == "cache" and r.choices[0].message.content == label,
      f"a repeat is a cache hit with the same label: {d}")

# JSON mode wraps the label.
r = client.chat.completions.create(model=a.model, response_format={"type": "json_object"},
                                   messages=[{"role": "user", "content": texts[1]}])
try:
    check(json.loads(r.choices[0].message.content).get("label") in labels,
          f"json_object reply: {r.choices[0].message.content}")
except ValueError:
    check(False, f"json_object reply is JSON: {r.choices[0].message.content!r}")

# Streaming: served as OpenAI streams are.
stream = client.chat.completions.create(
    model=a.model, stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": texts[2]}])
content, finish, usage, n, kinds = "", None, None, 0, set()
for chunk in stream:
    n += 1
    kinds.add(chunk.object)
    if chunk.choices:
        content += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
check(kinds == {"chat.completion.chunk"} and content in labels and finish == "stop"
      and usage is not None and usage.prompt_tokens > 0,
      f"stream: {n} chunks, content {content!r}, finish {finish!r}, usage {usage}")
r = client.chat.completions.create(model=a.model, messages=[{"role": "user", "content": texts[2]}])
check(r.choices[0].message.content == content, "streamed and plain answers agree")


def expect_error(exc_type, status, code, call, what):
    try:
        call()
    except exc_type as e:
        body = e.body if isinstance(e.body, dict) else {}
        ok = e.status_code == status and (code is None or body.get("code") == code)
        ok = ok and isinstance(body.get("message"), str) and "type" in body
        check(ok, f"{what}: {type(e).__name__} {e.status_code} {body.get('code')}")
    except Exception as e:  # the wrong exception type is a mismatch too
        check(False, f"{what}: expected {exc_type.__name__}, got {type(e).__name__}: {e}")
    else:
        check(False, f"{what}: no error raised")


expect_error(openai.NotFoundError, 404, "model_not_found",
             lambda: client.chat.completions.create(
                 model="no-such-model", messages=[{"role": "user", "content": "hi"}]),
             "unknown model")
bad = OpenAI(base_url=a.base_url, api_key="sk-not-a-valid-key", max_retries=0, timeout=30)
expect_error(openai.AuthenticationError, 401, "invalid_api_key",
             lambda: bad.chat.completions.create(
                 model=a.model, messages=[{"role": "user", "content": "hi"}]),
             "bad API key")
expect_error(openai.AuthenticationError, 401, "invalid_api_key",
             lambda: bad.models.list(), "bad API key on models.list")
expect_error(openai.BadRequestError, 400, None,
             lambda: client.chat.completions.create(
                 model=a.model, messages=[{"role": "system", "content": "no user turn"}]),
             "no user message")
expect_error(openai.NotFoundError, 404, "model_not_found",
             lambda: client.chat.completions.create(
                 model="no-such-model", stream=True, messages=[{"role": "user", "content": "hi"}]),
             "unknown model, streamed")



def spans_checks(model, rows):
    """The tagger through the same client: context in extra_body, spans in the reply."""
    rows = [r for r in rows if len(r["spans"]) >= 1][:12]
    first = None
    for row in rows:
        context = {"requested_slots": row["requested_slots"]}
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": row["text"]}],
            extra_body={"context": context})
        d = distill_of(r)
        try:
            content = json.loads(r.choices[0].message.content)
        except ValueError:
            check(False, f"span reply is JSON: {r.choices[0].message.content!r}")
            continue
        spans = content.get("spans")
        covered = isinstance(spans, list) and all(
            row["text"][s["start"]:s["end"]] == s["text"] for s in spans)
        if check(covered and spans == d.get("spans") and d.get("source") in ("student", "teacher"),
                 f"spans of {row['text'][:40]!r} ({d.get('source')}): {spans}"):
            first = first or (row, context, spans)
    if first is None:
        check(False, "no span answer to repeat")
        return
    row, context, spans = first
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": row["text"]}],
        extra_body={"context": context})
    d = distill_of(r)
    check(d["source"] == "cache" and d["spans"] == spans, f"a repeat is a cache hit: {d}")
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": row["text"]}],
        extra_body={"context": {"requested_slots": ["a question never asked"]}})
    check(distill_of(r)["source"] != "cache", "the same text after another question is no hit")
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": row["text"]}],
            extra_body={"context": {"colour": "red"}})
        check(False, "an unknown context field raised no error")
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        check(body.get("param") == "context.colour",
              f"an unknown context field: 400 naming {body.get('param')!r}")


if a.spans_model:
    spans_checks(a.spans_model, [json.loads(l) for l in open(a.spans_rows) if l.strip()])

if failures:
    print(f"serve_openai_client: {len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
print("serve_openai_client: all checks passed")
