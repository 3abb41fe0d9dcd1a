#!/usr/bin/env python3
"""Peer client for scripts/bench.py: Python's smtplib sending N messages over ONE connection.

    bench_smtplib.py HOST PORT N MESSAGE_FILE [--from ADDR] [--to ADDR]

smtplib speaks lock-step SMTP (EHLO once, then MAIL, RCPT, DATA, body per message; it never
pipelines), so it is the "typical scripted sender" baseline. The message file is sent as is
(its line endings are normalised to CRLF once, before the clock starts). Exits 0 only if every
message got a 250; prints one summary line on stderr.
"""

import argparse
import smtplib
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("message")
    ap.add_argument("--from", dest="sender", default="news@example.org")
    ap.add_argument("--to", default="reader@example.net")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    with open(args.message, "rb") as f:
        raw = f.read()
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    started = time.perf_counter()
    sent = 0
    try:
        with smtplib.SMTP(args.host, args.port, local_hostname="bench.localhost",
                          timeout=args.timeout) as smtp:
            smtp.ehlo()
            for _ in range(args.n):
                # sendmail raises on any refusal; an empty dict means every recipient took it.
                refused = smtp.sendmail(args.sender, [args.to], data)
                if refused:
                    print(f"bench_smtplib: refused: {refused}", file=sys.stderr)
                    return 1
                sent += 1
    except (smtplib.SMTPException, OSError) as e:
        print(f"bench_smtplib: error after {sent} messages: {e}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - started
    print(f"bench_smtplib: {sent} sent in {wall:.3f}s ({sent / wall:.0f} msg/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
