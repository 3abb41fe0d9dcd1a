#!/bin/bash
# DKIM bench (BENCHMARKS.md "DKIM signing"): RSA-2048-signed msg/s to smtp-sink at RTT 0 with
# 2 connections vs `openssl speed -multi 2 rsa2048`; Ed25519 vs unsigned CPU per message.
# Usage: scripts/bench_dkim.sh target/release/pipemail [N_RSA] [N_ED]
set -e
PM=$(realpath "$1"); NR=${2:-4000}; NE=${3:-20000}
WORK=${WORK:-$(mktemp -d)}; cd "$WORK"
[ -f rsa.pem ] || { openssl genpkey -algorithm rsa -pkeyopt rsa_keygen_bits:2048 -out rsa.pem 2>/dev/null; chmod 600 rsa.pem; }
[ -f ed.pem ] || { openssl genpkey -algorithm ed25519 -out ed.pem 2>/dev/null; chmod 600 ed.pem; }
printf 'From: News <news@example.org>\nTo: {{ name }} <{{ email }}>\nSubject: Hello {{ name }}\n\nDear {{ name }},\nthis is the spring newsletter.\n' > t.eml
mk() { python3 -c "
import sys
n=int(sys.argv[1]); print('email,name')
for i in range(n): print(f'u{i}@example.net,User {i}')" $1 > $2; }
[ -f l_$NR.csv ] || mk $NR l_$NR.csv
[ -f l_$NE.csv ] || mk $NE l_$NE.csv
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/sbin/smtp-sink -u nobody 127.0.0.1:$PORT 1000 & SINK=$!
trap "kill $SINK; rm -rf \"$WORK\"" EXIT
sleep 0.5
run() { # label list extra...
  local label=$1 list=$2; shift 2
  /usr/bin/time -f "%e %U %S" -o time.txt $PM send -H 127.0.0.1:$PORT --tls none -c 2 -q -l $list -t t.eml "$@" 2>err.txt || { cat err.txt; }
  read e u s < time.txt
  local n=$(($(wc -l < $list) - 1))
  python3 -c "
e,u,s,n=$e,$u,$s,$n
print(f'$label: {n} msgs in {e:.2f}s = {n/e:.0f} msg/s; CPU user+sys {u+s:.2f}s = {(u+s)/n*1e6:.0f} us/msg')"
}
echo "== openssl speed -multi 2 rsa2048 =="
openssl speed -multi 2 -seconds 5 rsa2048 2>/dev/null | grep -E "^rsa +2048|^rsa2048|sign" | tail -2
run "rsa-2048" l_$NR.csv --dkim-key rsa.pem --dkim-selector s1
echo "== openssl speed -multi 2 rsa2048 (after) =="
openssl speed -multi 2 -seconds 5 rsa2048 2>/dev/null | grep -E "^rsa +2048|^rsa2048|sign" | tail -2
run "unsigned" l_$NE.csv
run "ed25519" l_$NE.csv --dkim-key ed.pem --dkim-selector s2
run "unsigned" l_$NE.csv
run "ed25519" l_$NE.csv --dkim-key ed.pem --dkim-selector s2
