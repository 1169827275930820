#!/usr/bin/env bash
# Benchmark: peak RSS of `distill teach` over 1,000,000 synthetic inputs (Banking77 training
# sentences with a serial number appended, generated into a CSV under the work dir in /tmp)
# through a zero-latency sim-teacher at concurrency 64. Goal: peak RSS < 200 MB
# (/usr/bin/time -v "Maximum resident set size"). Also reports the time, and checks that no
# input is lost or paid twice. The budget ratio is printed LAST.
#
#   scripts/bench/teach_memory.sh [N=1000000] [CONCURRENCY=64]
source "$(dirname "$0")/teach_common.sh"
n=${1:-1000000}
c=${2:-64}
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (GNU time)" >&2; exit 1; }
input=$WORK/synthetic.csv
python3 - "$DATA/train.csv" "$input" "$n" <<'PY'
import csv, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = list(csv.DictReader(open(src, newline="", encoding="utf-8")))
with open(dst, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["text", "category"])
    for i in range(n):
        r = rows[i % len(rows)]
        w.writerow([f"{r['text']} (ref {i})", r["category"]])
PY
make_task "$input"
# The sim answers from the real training file; the serial numbers make every request unique.
start_sim --latency-ms 0 --error-rate 0 --gold "$DATA/train.csv"
t0=$(now)
/usr/bin/time -v -o "$WORK/time.txt" "$BIN" --state-dir "$WORK/state" -q teach \
  --task "$WORK/task.toml" --base-url "$URL" --out "$WORK/teacher.jsonl" --concurrency "$c" >"$WORK/teach.out"
t1=$(now)
cat "$WORK/teach.out"
check_output "$WORK/teacher.jsonl" "$n"
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")
secs=$(echo "$t1 - $t0" | bc -l)
printf 'distill teach: %d inputs in %.1f s (%.0f req/s)\n' "$n" "$secs" "$(echo "$n / $secs" | bc -l)"
printf 'peak RSS: %.1f MB\n' "$(echo "$rss_kb / 1024" | bc -l)"
printf 'budget: 200 MB\n'
printf 'ratio peak RSS / 200 MB budget (must be < 1): %.3f\n' "$(echo "$rss_kb / 1024 / 200" | bc -l)"
