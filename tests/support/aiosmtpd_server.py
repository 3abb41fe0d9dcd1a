#!/usr/bin/python3
"""A small SMTP server WITHOUT PIPELINING for pipemail's fallback tests.

Built on aiosmtpd (Debian: python3-aiosmtpd). aiosmtpd's EHLO reply advertises only
SIZE, 8BITMIME, SMTPUTF8 (with -u) and HELP: no PIPELINING, no CHUNKING, no STARTTLS
unless a TLS context is given (this server gives none).

Run it directly (what tests/support/mod.rs does):

    /usr/bin/python3 tests/support/aiosmtpd_server.py --dir DIR --port PORT [--host 127.0.0.1]

or through aiosmtpd's own CLI, with this directory on PYTHONPATH:

    PYTHONPATH=tests/support python3 -m aiosmtpd -n -l 127.0.0.1:PORT \
        -c aiosmtpd_server.MaildirHandler DIR

(the CLI names itself after socket.getfqdn(), which can stall where DNS is unreachable;
the direct form always says "localhost").

Every accepted message is stored Maildir-like in DIR/new/ as two files with the same
sequence number: NNNNNNNN.json (the envelope: mail_from, rcpt_tos, mail_options,
rcpt_options) and NNNNNNNN.eml (the message data exactly as received after
dot-unstuffing, CRLF line ends kept, without the terminating "."). The .json file is
renamed into new/ first and the .eml file last, so a reader that sees an .eml also sees
its .json.

Recipient policy, the same as scripts/postfix-smtpd.sh: a local part starting with
"defer" or the domain defer.example.net gets 450; a local part starting with "reject" or
the domain reject.example.net gets 550; everything else is accepted.
"""

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys

from aiosmtpd.smtp import SMTP


class MaildirHandler:
    def __init__(self, directory):
        self.directory = os.path.abspath(directory)
        for sub in ("tmp", "new"):
            os.makedirs(os.path.join(self.directory, sub), exist_ok=True)
        self._seq = itertools.count(1)

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("MaildirHandler takes exactly one argument: the directory")
        return cls(args[0])

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local, _, domain = address.rpartition("@")
        local = local.lower()
        domain = domain.lower()
        if local.startswith("defer") or domain == "defer.example.net":
            return "450 4.2.1 Mailbox temporarily unavailable (test: defer)"
        if local.startswith("reject") or domain == "reject.example.net":
            return "550 5.1.1 Mailbox unavailable (test: reject)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        seq = next(self._seq)
        name = f"{seq:08d}"
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "rcpt_options": list(envelope.rcpt_options),
        }
        self._deliver(name + ".json", json.dumps(meta).encode("utf-8"))
        self._deliver(name + ".eml", envelope.original_content)
        return f"250 2.0.0 OK: queued as {name}"

    def _deliver(self, filename, data):
        tmp = os.path.join(self.directory, "tmp", filename)
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.directory, "new", filename))


async def watch_parent(pid, loop):
    """Stops the server once the test process that started it has died (and we were
    re-parented), so a killed test run leaves no server behind."""
    while os.getppid() == pid:
        await asyncio.sleep(0.5)
    loop.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process (the test that started us) is gone",
    )
    args = parser.parse_args()

    handler = MaildirHandler(args.dir)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(handler, hostname="localhost", ident="aiosmtpd (pipemail test)"),
            host=args.host,
            port=args.port,
        )
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, loop.stop)
    if args.parent_pid is not None:
        loop.create_task(watch_parent(args.parent_pid, loop))
    print(f"aiosmtpd ready on {args.host}:{args.port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
