"""Peer for scripts/bench/teach_vs_openai.sh: label the same inputs as `distill teach`
with the official `openai` Python client (AsyncOpenAI) at the same concurrency.

Builds the same request as distill (system prompt, user template with the label list,
temperature, max_tokens, response_format json_schema with the label enum), sends it with
N concurrent workers, parses the `label` from each reply, and prints one JSON line:
{"n", "ok", "seconds", "rps", "openai"}. Timing covers the request loop only (after
imports, reading the inputs and building the client), which favours the peer.
"""

import argparse
import asyncio
import csv
import json
import os
import time
import tomllib

import openai
from openai import AsyncOpenAI


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--base-url", required=True)
    a = ap.parse_args()

    spec = tomllib.load(open(a.task, "rb"))
    t = spec["teacher"]
    labels_path = spec["labels"]["file"]
    if not os.path.isabs(labels_path):
        labels_path = os.path.join(os.path.dirname(a.task), labels_path)
    labels = json.load(open(labels_path))
    label_list = "".join(f"- {l}\n" for l in labels)
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": labels}},
        "required": ["label"],
        "additionalProperties": False,
    }
    texts = []
    with open(a.input, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            texts.append(row[spec["input"]["text_column"]])
            if a.limit is not None and len(texts) >= a.limit:
                break

    client = AsyncOpenAI(base_url=a.base_url, api_key="distill-local", max_retries=6)
    labels_set = set(labels)

    async def run() -> int:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for x in texts:
            queue.put_nowait(x)
        ok = 0

        async def worker() -> None:
            nonlocal ok
            while True:
                try:
                    text = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                r = await client.chat.completions.create(
                    model=t["model"],
                    messages=[
                        {"role": "system", "content": t["system_prompt"]},
                        {
                            "role": "user",
                            "content": t["user_template"]
                            .replace("{labels}", label_list)
                            .replace("{text}", text),
                        },
                    ],
                    temperature=t.get("temperature", 0.0),
                    max_tokens=t["max_tokens"],
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "label", "strict": True, "schema": schema},
                    },
                )
                try:
                    if json.loads(r.choices[0].message.content)["label"] in labels_set:
                        ok += 1
                except (ValueError, KeyError, TypeError):
                    pass

        await asyncio.gather(*(worker() for _ in range(a.concurrency)))
        return ok

    start = time.perf_counter()
    ok = asyncio.run(run())
    secs = time.perf_counter() - start
    print(
        json.dumps(
            {
                "n": len(texts),
                "ok": ok,
                "seconds": round(secs, 3),
                "rps": round(len(texts) / secs, 1),
                "openai": openai.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
