#!/bin/sh
# MIME composition cost of `pipemail send` (issue 12), measured from outside with GNU time:
#   (a) text only (sent as rendered), (a') text only composed as MIME, (b) HTML + text,
#   (b') HTML with the text derived from it, (c) HTML + text + one shared 100 KiB --attach file,
#   (d) HTML + text + a per-row 20 KiB `Attach:` file (FILES distinct files, cycled),
#   (e) as (d), every row its own file (no reuse possible).
# Each case sends N rows to `pipemail sink` (discarding) on loopback, one connection, and
# prints wall seconds, msg/s, client CPU (user + system) per message and peak RSS.
#
#   scripts/bench_mime.sh [N] [FILES]      (defaults: 10000 200)
#
# Needs a release build (cargo build --release; PIPEMAIL=path overrides) and /usr/bin/time.
# Scratch data lives in a temporary directory that is removed at the end.
set -eu

N=${1:-10000}
FILES=${2:-200}
BIN=${PIPEMAIL:-$(cd "$(dirname "$0")/.." && pwd)/target/release/pipemail}
PORT=${PORT:-25825}
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }

T=$(mktemp -d /tmp/pipemail-bench-mime.XXXXXX)
SINK_PID=
cleanup() {
    if [ -n "$SINK_PID" ]; then
        kill "$SINK_PID" 2>/dev/null || true
        wait "$SINK_PID" 2>/dev/null || true
    fi
    rm -rf "$T"
}
trap cleanup EXIT INT TERM

python3 - "$T" "$N" "$FILES" <<'EOF'
import os, sys
t, n, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(f"{t}/att", exist_ok=True)
os.makedirs(f"{t}/own", exist_ok=True)
with open(f"{t}/list.csv", "w") as f:
    f.write("email,name,file,own\n")
    for i in range(n):
        f.write(f"user{i}@example.net,User {i},{i % files},{i}\n")
body = "".join(f"Line {j} of the newsletter for {{{{ name }}}}, with some words in it.\n" for j in range(14))
head = "From: News <news@example.org>\nTo: {{ name }} <{{ email }}>\nSubject: News for {{ name }}\n"
open(f"{t}/text.eml", "w").write(head + "\n" + body)
open(f"{t}/empty.eml", "w").write(head + "\n")
open(f"{t}/attach.eml", "w").write(head + "Attach: att/{{ file }}.bin\n\n" + body)
open(f"{t}/own.eml", "w").write(head + "Attach: own/{{ own }}.bin\n\n" + body)
html = "<html><body>" + "".join(f"<p>Line {j} of the <b>newsletter</b> for {{{{ name }}}}, with some words in it.</p>\n" for j in range(14)) + "</body></html>\n"
open(f"{t}/news.html", "w").write(html)
open(f"{t}/shared.bin", "wb").write(os.urandom(100 * 1024))
for i in range(files):
    open(f"{t}/att/{i}.bin", "wb").write(os.urandom(20 * 1024))
for i in range(n):
    open(f"{t}/own/{i}.bin", "wb").write(os.urandom(20 * 1024))
EOF

"$BIN" sink --listen "127.0.0.1:$PORT" 2>"$T/sink.log" &
SINK_PID=$!
sleep 0.5

run() {
    name=$1; shift
    /usr/bin/time -f "%e %U %S %M" -o "$T/time" \
        "$BIN" send --host "127.0.0.1:$PORT" --tls none --helo bench.test --quiet \
        --list "$T/list.csv" --report "$T/r.csv" "$@"
    sent=$(grep -c ',sent,' "$T/r.csv" || true)
    [ "$sent" -eq "$N" ] || { echo "$name: $sent of $N sent" >&2; exit 1; }
    read -r wall user sys rss <"$T/time"
    NAME="$name" python3 -c "
import os
w,u,s,r,n=$wall,$user,$sys,$rss,$N
print(f'| {os.environ[\"NAME\"]} | {n:,} | {w:.2f} | {n/w:,.0f} | {(u+s)/n*1e6:.0f} | {r/1024:.0f} |')"
    rm -f "$T/r.csv"
}

printf 'Content-Type: text/plain\n' >"$T/ct"
cat "$T/ct" "$T/text.eml" >"$T/text-mime.eml"
echo "| case | rows | wall s | msg/s | client CPU µs/msg | peak RSS MiB |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
run "(a) text only" --template "$T/text.eml"
run "(a') text only, composed (Content-Type field)" --template "$T/text-mime.eml"
run "(b) HTML + text" --template "$T/text.eml" --html "$T/news.html"
run "(b') HTML, text derived" --template "$T/empty.eml" --html "$T/news.html"
run "(c) (b) + shared 100 KiB --attach" --template "$T/text.eml" --html "$T/news.html" --attach "$T/shared.bin"
run "(d) (b) + per-row 20 KiB Attach: ($FILES files)" --template "$T/attach.eml" --html "$T/news.html"
run "(e) (b) + per-row 20 KiB Attach: (own file each)" --template "$T/own.eml" --html "$T/news.html"
