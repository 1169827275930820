#!/usr/bin/env python3
"""Drives a running `distill gateway` (the starter config of `distill gateway init`, tiers on the
sim-teacher) with the official OpenAI Python client, as an app that only swapped its base URL
would. Called by gateway_openai_client.sh.

Checks: models.list names the route aliases; a plain request goes to the cheap tier with the
`distill` object; a streamed one relays the same answer chunk by chunk with the usage chunk and
its `distill` object; a repeat is a cache hit that costs nothing; a rules-routed prompt (a
keyword) goes to the premium tier; a router route (a trained router, its eval's threshold) sends
MMLU prompts to both tiers and says why; the output cap reaches the upstream (`finish_reason: length`
under a tiny client cap); an Anthropic tier answers whole and streamed in Chat Completions' shape,
with its cap and a refused field; errors raise the client's typed exceptions (404 unknown model, 401 bad
key, 400 bad request). Exits 1 on any mismatch.
"""
import argparse
import json
import sys

import openai
from openai import OpenAI

ap = argparse.ArgumentParser()
ap.add_argument("--base-url", required=True)
ap.add_argument("--key-file", required=True, help="the API key (read from a file, never printed)")
ap.add_argument("--router-prompts", required=True,
                help="MMLU prompts (JSON strings, one per line) for the router route")
a = ap.parse_args()

key = open(a.key_file).read().strip()
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


models = [m.id for m in client.models.list()]
check({"auto", "support-bot"} <= set(models), f"models.list has the route aliases (got {models})")

question = "Where is the card I ordered last week?"
r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": question}])
d = distill_of(r)
content = r.choices[0].message.content
check(isinstance(d, dict) and d.get("route") == "auto" and d.get("tier") == "cheap"
      and d.get("cache_hit") is False and d.get("cost_usd", 0) > 0 and d.get("saved_usd", 0) > 0,
      f"plain request: cheap tier, priced, saving against premium ({d})")
check(bool(content) and r.object == "chat.completion" and r.usage.completion_tokens > 0,
      "plain request: an answer with usage")

again = client.chat.completions.create(
    model="auto", messages=[{"role": "user", "content": "  " + question.replace(" ", "  ")}])
d2 = distill_of(again)
check(d2.get("cache_hit") is True and d2.get("cost_usd") == 0
      and again.choices[0].message.content == content,
      f"a repeat (other whitespace) is a cache hit that costs nothing ({d2})")

stream_q = "My transfer has not arrived yet"
chunks = list(client.chat.completions.create(
    model="auto", messages=[{"role": "user", "content": stream_q}],
    stream=True, stream_options={"include_usage": True}))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
usage_chunks = [c for c in chunks if not c.choices and c.usage is not None]
direct = client.chat.completions.create(
    model="auto", messages=[{"role": "user", "content": stream_q}])
check(text and text == direct.choices[0].message.content and distill_of(direct)["cache_hit"],
      "a streamed answer is relayed whole, then answers the same plain request from the cache")
check(len(usage_chunks) == 1 and usage_chunks[0].usage.completion_tokens > 0
      and distill_of(usage_chunks[0]).get("cost_usd", 0) > 0,
      "the stream ends with the usage chunk and its distill object")
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check(finishes == ["stop"], f"one stop chunk (got {finishes})")

proof = client.chat.completions.create(
    model="auto", messages=[{"role": "user", "content": "Prove step by step that 17 is prime"}])
dp = distill_of(proof)
check(dp.get("tier") == "premium" and dp.get("reason", "").startswith("rule"),
      f"a keyword rule sends a proof to the premium tier ({dp})")

router_prompts = [json.loads(l) for l in open(a.router_prompts) if l.strip()]
tiers = []
for p in router_prompts:
    rr = client.chat.completions.create(model="mmlu-auto", messages=[{"role": "user", "content": p}])
    dr = distill_of(rr)
    tiers.append(dr.get("tier"))
    if not dr.get("reason", "").startswith("router p="):
        check(False, f"a router route says why ({dr})")
        break
share = tiers.count("premium") / max(len(tiers), 1)
check(set(tiers) == {"cheap", "premium"},
      f"the router sends {len(tiers)} MMLU prompts to both tiers (premium share {share:.2f})")

capped = client.chat.completions.create(
    model="auto", max_tokens=1,
    messages=[{"role": "user", "content": "I would like to know how to top up my account by card"}])
check(capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 1,
      f"the output cap reaches the upstream (finish_reason {capped.choices[0].finish_reason!r})")

# An Anthropic tier (the sim's /v1/messages): the client sees Chat Completions, whole and streamed.
cq = "Can I get a refund for a duplicate charge?"
cr = client.chat.completions.create(
    model="claude", messages=[{"role": "system", "content": "Answer briefly."},
                              {"role": "user", "content": cq}])
dc = distill_of(cr)
check(cr.object == "chat.completion" and cr.model == "claude-sonnet-4-5"
      and bool(cr.choices[0].message.content) and cr.choices[0].finish_reason == "stop"
      and cr.usage.prompt_tokens > 0 and dc.get("tier") == "claude" and dc.get("cost_usd", 0) > 0,
      f"an Anthropic tier answers as a chat completion ({dc})")
cchunks = list(client.chat.completions.create(
    model="claude", messages=[{"role": "user", "content": "Why was my card declined abroad?"}],
    stream=True, stream_options={"include_usage": True}))
ctext = "".join(c.choices[0].delta.content or "" for c in cchunks if c.choices)
cusage = [c for c in cchunks if not c.choices and c.usage is not None]
cfin = [c.choices[0].finish_reason for c in cchunks if c.choices and c.choices[0].finish_reason]
check(bool(ctext) and cfin == ["stop"] and len(cusage) == 1 and cusage[0].usage.completion_tokens > 0
      and distill_of(cusage[0]).get("cost_usd", 0) > 0,
      "an Anthropic tier streams as Chat Completions chunks, with the usage chunk")
ccap = client.chat.completions.create(
    model="claude", max_tokens=2,
    messages=[{"role": "user", "content": "Tell me all about exchange rates for card payments"}])
check(ccap.choices[0].finish_reason == "length" and ccap.usage.completion_tokens == 2,
      f"a cap on an Anthropic tier stops with length ({ccap.choices[0].finish_reason!r})")
try:
    client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    check(False, "tools on an Anthropic tier raise BadRequestError")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "tools" in str(e), "tools on an Anthropic tier: 400 naming the field")

try:
    client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    check(False, "unknown model raises NotFoundError")
except openai.NotFoundError as e:
    check(e.status_code == 404 and "auto" in str(e), "unknown model: 404 naming the aliases")

try:
    OpenAI(base_url=a.base_url, api_key="sk-wrong", max_retries=0).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}])
    check(False, "a bad key raises AuthenticationError")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "a bad key: 401")

try:
    client.chat.completions.create(model="auto", messages=[])
    check(False, "empty messages raise BadRequestError")
except openai.BadRequestError as e:
    check(e.status_code == 400, "empty messages: 400")

if failures:
    print(f"{len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
print("all gateway client checks passed")
