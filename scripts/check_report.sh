#!/usr/bin/env bash
# Renders an eval's report.html in headless Chromium and fails when the page is blank or a
# chart is missing.
#
#   scripts/check_report.sh EVAL_DIR [OUT.png]
#
# Checks: (1) report.html has the four charts (frontier, cascade, confusion, reliability), each
# an inline <svg> with drawn data; (2) Chromium renders it to a PNG (desktop and phone widths)
# that is not a single colour. Installs Debian's `chromium` when missing and running as root.
set -euo pipefail
dir=${1:?usage: scripts/check_report.sh EVAL_DIR [OUT.png]}
html="$dir/report.html"
png=${2:-$dir/report.png}
[ -s "$html" ] || { echo "check_report: $html is missing or empty" >&2; exit 1; }

python3 - "$html" <<'PY'
import re, sys
page = open(sys.argv[1], encoding="utf-8").read()
bad = []
for chart in ("frontier", "cascade", "confusion", "reliability"):
    m = re.search(r'<figure id="%s" data-chart="%s">(.*?)</figure>' % (chart, chart), page, re.S)
    if not m:
        bad.append(f"chart `{chart}` is missing")
        continue
    svg = m.group(1)
    if "<svg" not in svg:
        bad.append(f"chart `{chart}` has no <svg>")
    # Data = drawn marks beyond the frame: circles, filled rects, polylines/paths.
    marks = len(re.findall(r"<(circle|polyline|path|rect)\b", svg))
    if marks < 4:
        bad.append(f"chart `{chart}` has no data ({marks} marks)")
if "<table" not in page:
    bad.append("the summary table is missing")
if bad:
    print("check_report: " + "; ".join(bad), file=sys.stderr)
    sys.exit(1)
print("check_report: 4 charts with data, summary table present")
PY

browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
if [ -z "$browser" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "check_report: installing chromium" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
    browser=chromium
  else
    echo "check_report: chromium is not installed (apt-get install chromium)" >&2
    exit 1
  fi
fi

shot() { # width height out.png
  local profile; profile=$(mktemp -d)
  timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --no-first-run --hide-scrollbars --user-data-dir="$profile" \
    --window-size="$1,$2" --screenshot="$3" "file://$(realpath "$html")" >/dev/null 2>&1 || true
  rm -rf "$profile"
  [ -s "$3" ] || { echo "check_report: chromium wrote no screenshot $3" >&2; exit 1; }
}
shot 1280 4000 "$png"
phone="${png%.png}-phone.png"
shot 390 6000 "$phone"

python3 - "$png" "$phone" <<'PY'
# A PNG that decodes to a single colour is a blank page. Pure stdlib: zlib + unfiltering.
import struct, sys, zlib
def pixels(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR": ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT": idat += body
        pos += 12 + n
    w, h, depth, ctype = ihdr[:4]
    bpp = {2: 3, 6: 4, 0: 1, 4: 2}[ctype] * depth // 8
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    colours, i = set(), 0
    for _ in range(h):
        f = raw[i]; line = bytearray(raw[i + 1:i + 1 + stride]); i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]; c = prev[x - bpp] if x >= bpp else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = line
        for x in range(0, stride, bpp * 7):
            colours.add(bytes(line[x:x + bpp]))
        if len(colours) > 50: break
    return w, h, len(colours)
bad = False
for p in sys.argv[1:]:
    w, h, k = pixels(p)
    print(f"check_report: {p}: {w}x{h}, {k}{'+' if k > 50 else ''} colours")
    if k < 3:
        print(f"check_report: {p} is blank", file=sys.stderr); bad = True
sys.exit(1 if bad else 0)
PY
echo "check_report: ok ($png)"
