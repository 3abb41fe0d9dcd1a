#!/usr/bin/python3
"""Verify every DKIM-Signature of a message with dkimpy (Debian's python3-dkim).

Usage: dkim_verify.py MESSAGE RECORDS
RECORDS holds one "NAME<TAB>TXT" line per key, e.g.
"s1._domainkey.example.com<TAB>v=DKIM1; k=rsa; p=MIIB...": the stub DNS serves only those.

Exit codes: 0 all signatures verify, 1 one fails (or there are none), 3 dkimpy is missing.
Call it with /usr/bin/python3: Debian's python3-dkim is installed for that interpreter only.
"""
import sys

try:
    import dkim
except ImportError as e:  # reported to the Rust test, which skips or fails
    print(f"python3-dkim missing: {e}", file=sys.stderr)
    sys.exit(3)


def main():
    message = open(sys.argv[1], "rb").read()
    records = {}
    for line in open(sys.argv[2], encoding="ascii"):
        name, _, txt = line.rstrip("\n").partition("\t")
        records[name.strip().rstrip(".").lower()] = txt.encode("ascii")

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        return records.get(name.rstrip(".").lower())

    d = dkim.DKIM(message)
    count = sum(1 for h in d.headers if h[0].lower() == b"dkim-signature")
    if count == 0:
        print("no DKIM-Signature", file=sys.stderr)
        return 1
    ok = True
    for idx in range(count):
        good = d.verify(idx=idx, dnsfunc=dnsfunc)
        print(f"signature {idx}: {'pass' if good else 'FAIL'}")
        ok = ok and good
    return 0 if ok else 1


sys.exit(main())
