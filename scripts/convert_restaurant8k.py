#!/usr/bin/env python3
"""Restaurant-8k (PolyAI, span_extraction/restaurant8k) to distill's extraction JSONL.

In:  a JSON list of {userInput: {text}, context: {requestedSlots}, labels: [{slot, valueSpan:
     {startIndex?, endIndex}}]} (a missing startIndex means 0).
Out: one line per turn, {"id", "text", "requested_slots": [...], "spans": [{"slot", "start",
     "end", "text"}]}, offsets in Unicode scalar values (Python string indices), spans sorted.

The annotation has a few overlapping spans (59 in train, 18 in test: "tonight" marked both a
date and part of a time). One character belongs to one span in distill's gold, so of two
overlapping spans the longer is kept (the first on a tie); the count dropped is printed.

usage: convert_restaurant8k.py IN.json OUT.jsonl PREFIX
"""
import json
import os
import sys


def convert(src, dst, prefix):
    turns = json.load(open(src, encoding="utf-8"))
    dropped = 0
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        for i, turn in enumerate(turns, 1):
            text = turn["userInput"]["text"]
            spans = []
            for label in turn.get("labels", []):
                span = label["valueSpan"]
                start, end = span.get("startIndex", 0), span["endIndex"]
                if not 0 <= start < end <= len(text):
                    sys.exit(f"{src}: turn {i}: span {start}..{end} outside the text")
                spans.append({"slot": label["slot"], "start": start, "end": end,
                              "text": text[start:end]})
            # Longest first, then position: a kept span is never displaced by a shorter one.
            kept = []
            for s in sorted(spans, key=lambda s: (-(s["end"] - s["start"]), s["start"])):
                if all(s["end"] <= k["start"] or k["end"] <= s["start"] for k in kept):
                    kept.append(s)
                else:
                    dropped += 1
            kept.sort(key=lambda s: s["start"])
            row = {"id": f"{prefix}-{i}", "text": text,
                   "requested_slots": turn.get("context", {}).get("requestedSlots", []),
                   "spans": kept}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, dst)
    print(f"{dst}: {len(turns)} turns, {dropped} overlapping spans dropped", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    convert(*sys.argv[1:])
