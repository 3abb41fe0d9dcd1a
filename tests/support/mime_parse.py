#!/usr/bin/env python3
"""Parse one RFC 5322 message from stdin with Python's `email` package (policy.default),
an independent MIME parser, and print its structure as JSON for pipemail's tests.

Output: {"headers": [[name, decoded value], ...], "defects": [...], "root": PART}
PART:   {"content_type", "cte", "disposition", "filename", "content_id", "charset",
         "defects", and either "parts": [PART...] + "boundary", or "payload_b64"
         (the decoded payload) and, for text/*, "text" (decoded with the charset)}
"""
import base64
import email
import json
import sys
from email import policy


def part_info(part):
    info = {
        "content_type": part.get_content_type(),
        "cte": str(part.get("Content-Transfer-Encoding", "")),
        "disposition": part.get_content_disposition(),
        "filename": part.get_filename(),
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


def main():
    data = sys.stdin.buffer.read()
    msg = email.message_from_bytes(data, policy=policy.default)
    out = {
        "headers": [[k, str(v)] for k, v in msg.items()],
        "defects": sorted(type(d).__name__ for d in msg.defects),
        "root": part_info(msg),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
