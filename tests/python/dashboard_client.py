#!/usr/bin/env python3
"""Follow a metricast dashboard the way a user's script would.

    dashboard_client.py ws://HOST:PORT/dashboard [--expect N] [--keepalives K]
                        [--timeout SECS] [--out FILE]

Prints READY on standard output as soon as the snapshot has arrived: from
then on every accepted record reaches this client, so a caller can start
sending. Then writes the snapshot and each later message, one JSON object a
line, until N metric_update and K keepalive messages have arrived.
Keepalives are written only when K is above 0. A snapshot after the first is
written too, so that a caller can see it was resynced.

Exits 0 when everything expected arrived, 1 on a timeout, a closed
connection or an unexpected message (saying which on standard error).
"""

import argparse
import asyncio
import json
import sys

import websockets


class Progress:
    def __init__(self):
        self.updates = 0
        self.keepalives = 0

    def describe(self, args):
        return (
            f"got {self.updates} of {args.expect} metric_update and "
            f"{self.keepalives} of {args.keepalives} keepalive messages"
        )


def one_line(text):
    # Raw line breaks can only be whitespace between JSON tokens, so this
    # keeps one message per line without touching the number text the
    # server wrote.
    return text.replace("\r", " ").replace("\n", " ")


def parse(message):
    if not isinstance(message, str):
        raise ValueError(f"expected a text frame, got {len(message)} binary bytes")
    event = json.loads(message)
    if not isinstance(event, dict) or "event" not in event:
        raise ValueError(f"expected an object with an event, got {message!r}")
    return event["event"]


async def follow(args, out, progress):
    async with websockets.connect(args.url) as ws:
        first = await ws.recv()
        if parse(first) != "snapshot":
            raise ValueError(f"expected a snapshot first, got {first!r}")
        print("READY", flush=True)
        out.write(one_line(first) + "\n")
        while progress.updates < args.expect or progress.keepalives < args.keepalives:
            message = await ws.recv()
            event = parse(message)
            if event == "metric_update":
                progress.updates += 1
            elif event == "keepalive":
                progress.keepalives += 1
                if args.keepalives == 0:
                    continue
            out.write(one_line(message) + "\n")
            out.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws://HOST:PORT/dashboard")
    parser.add_argument("--expect", type=int, default=0, metavar="N",
                        help="metric_update messages to wait for")
    parser.add_argument("--keepalives", type=int, default=0, metavar="K",
                        help="keepalive messages to wait for (and write)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECS",
                        help="give up after this long in all [30]")
    parser.add_argument("--out", metavar="FILE",
                        help="write messages here instead of standard output")
    args = parser.parse_args()

    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    progress = Progress()
    try:
        asyncio.run(asyncio.wait_for(follow(args, out, progress), args.timeout))
    except asyncio.TimeoutError:
        sys.exit(f"dashboard_client: timed out after {args.timeout} s: "
                 f"{progress.describe(args)}")
    except websockets.ConnectionClosed as e:
        sys.exit(f"dashboard_client: the server closed the connection ({e}): "
                 f"{progress.describe(args)}")
    except (OSError, websockets.InvalidHandshake) as e:
        sys.exit(f"dashboard_client: cannot connect to {args.url}: {e}")
    except ValueError as e:
        sys.exit(f"dashboard_client: {e}")
    finally:
        out.flush()
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    main()
