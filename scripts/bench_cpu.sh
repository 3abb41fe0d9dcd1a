#!/bin/bash
# CPU per message from outside the process (issue 15's measure, BENCHMARKS.md "Issue 15"):
# `/usr/bin/time` user + system of the whole `pipemail send`, N rows of the bench.py template
# (1 KiB body), one connection, `--report /dev/null --tls none`; DATA to Postfix smtp-sink,
# BDAT to `pipemail sink`. Several binaries are run alternately, so they share the machine's
# state; the median of the runs is printed per binary and mode.
# Usage: scripts/bench_cpu.sh [-n ROWS] [-r RUNS] [-m data|bdat|both] BIN [BIN...]
set -euo pipefail
N=20000; RUNS=5; MODE=both
while getopts "n:r:m:" o; do
    case $o in
        n) N=$OPTARG ;;
        r) RUNS=$OPTARG ;;
        m) MODE=$OPTARG ;;
        *) sed -n '2,8p' "$0"; exit 64 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,8p' "$0"; exit 64; }
BINS=()
for b in "$@"; do BINS+=("$(realpath "$b")"); done
[ -x /usr/sbin/smtp-sink ] || [ "$MODE" = bdat ] || { echo "needs /usr/sbin/smtp-sink" >&2; exit 69; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
python3 - "$N" <<'PY'
import sys
n = int(sys.argv[1])
line = "The quick brown fox jumps over the lazy dog; pack my box with jugs.\n"
body = ""
while len(body) + len(line) <= 1024:
    body += line
body += "x" * (1024 - len(body) - 1) + "\n"
open("t.eml", "w").write(
    "From: Bench <bench@example.org>\nTo: {{ email }}\n"
    "Subject: Benchmark message for {{ first_name }}\n"
    "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n" + body)
with open("list.csv", "w") as f:
    f.write("email,first_name\n")
    for i in range(n):
        f.write(f"u{i}@example.net,User{i}\n")
PY
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
one() { # BIN MODE -> prints CPU µs/msg
    local bin=$1 mode=$2 p sink
    p=$(port)
    if [ "$mode" = data ]; then
        /usr/sbin/smtp-sink -u nobody "127.0.0.1:$p" 1000 & sink=$!
    else
        "$bin" sink --listen "127.0.0.1:$p" >/dev/null 2>&1 & sink=$!
    fi
    sleep 0.5
    /usr/bin/time -f "%U %S" -o time.txt "$bin" send -H "127.0.0.1:$p" --tls none -c 1 -q \
        -l list.csv -t t.eml --report /dev/null >/dev/null 2>err.txt || cat err.txt >&2
    kill $sink; wait $sink 2>/dev/null || true
    python3 -c "import sys; u, s = map(float, open('time.txt').read().split()); print(f'{(u + s) / $N * 1e6:.1f}')"
}
modes=(data bdat)
[ "$MODE" = both ] || modes=("$MODE")
declare -A runs
for ((r = 0; r < RUNS; r++)); do
    for mode in "${modes[@]}"; do
        for i in "${!BINS[@]}"; do
            runs[$i.$mode]+="$(one "${BINS[$i]}" "$mode") "
        done
    done
done
for mode in "${modes[@]}"; do
    for i in "${!BINS[@]}"; do
        python3 -c "
import statistics, sys
v = [float(x) for x in sys.argv[3].split()]
runs = ' '.join(f'{x:.1f}' for x in v)
print(f'{sys.argv[1]:4} {sys.argv[2]}: µs/msg {runs}  median {statistics.median(v):.1f}')
" "$mode" "${BINS[$i]}" "${runs[$i.$mode]}"
    done
done
