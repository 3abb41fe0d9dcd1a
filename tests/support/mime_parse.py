#!/usr/bin/env python3
"""Parse one RFC 5322 message from stdin (or, with --stream, many, length-prefixed) with Python's `email` package (policy.default),
an independent MIME parser, and print its structure as JSON for pipemail's tests.

Output: {"headers": [[name, decoded value], ...], "header_errors": [[name, error], ...],
         "defects": [...], "root": PART}
PART:   {"content_type", "cte", "disposition", "filename", "content_id", "charset",
         "defects", and either "parts": [PART...] + "boundary", or "payload_b64"
         (the decoded payload) and, for text/*, "text" (decoded with the charset)}
"""
import base64
import email
import json
import sys
from email import policy


def clean(text):
    """Raw 8-bit header bytes come back as surrogate escapes: make them real UTF-8 text."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def part_info(part):
    info = {
        "content_type": part.get_content_type(),
        "cte": str(part.get("Content-Transfer-Encoding", "")),
        "disposition": part.get_content_disposition(),
        "filename": part.get_filename() and clean(part.get_filename()),
        "content_id": str(part["Content-ID"]) if part["Content-ID"] is not None else None,
        "charset": part.get_content_charset(),
        "defects": sorted(type(d).__name__ for d in part.defects),
    }
    if part.is_multipart():
        info["boundary"] = part.get_boundary()
        info["parts"] = [part_info(p) for p in part.iter_parts()]
    else:
        payload = part.get_payload(decode=True) or b""
        info["payload_b64"] = base64.b64encode(payload).decode("ascii")
        if part.get_content_maintype() == "text":
            info["text"] = part.get_content()
    return info


def describe(data):
    msg = email.message_from_bytes(data, policy=policy.default)
    headers = []
    header_errors = []
    for name, raw in msg.raw_items():
        try:
            headers.append([name, clean(str(policy.default.header_fetch_parse(name, raw)))])
        except Exception as e:  # the parser's own bugs, e.g. a display name of "."
            headers.append([name, clean(str(raw))])
            header_errors.append([name, repr(e)])
    out = {
        "headers": headers,
        "header_errors": header_errors,
        "defects": sorted(type(d).__name__ for d in msg.defects),
        "root": part_info(msg),
    }
    return out


def main():
    if sys.argv[1:] == ["--stream"]:
        # Many messages: each is a decimal length line, then that many octets; one JSON
        # line out per message.
        stdin = sys.stdin.buffer
        while True:
            line = stdin.readline()
            if not line:
                return
            data = stdin.read(int(line))
            sys.stdout.write(json.dumps(describe(data)) + "\n")
            sys.stdout.flush()
    json.dump(describe(sys.stdin.buffer.read()), sys.stdout)


if __name__ == "__main__":
    main()
