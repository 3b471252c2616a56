#!/usr/bin/env python3
"""A mioraft client written from schema/messages.capnp alone (pycapnp), to prove the schema is
the whole protocol: preamble, ClientRequest, ClientResponse, standard stream framing.

usage: mioraft_client.py propose|query <bytes> <host:port>...
Prints the state machine's reply on success; exits 1 with a message otherwise.
"""

import os
import random
import socket
import struct
import sys
import time

import capnp  # pycapnp

SCHEMA = capnp.load(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schema", "messages.capnp")
)


def read_frame(sock):
    """Reads one message in the standard stream framing and returns its bytes."""

    def read_exactly(count):
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        return data

    head = read_exactly(4)
    segment_count = struct.unpack("<I", head)[0] + 1
    table_bytes = (4 * (1 + segment_count) + 7) // 8 * 8
    table = head + read_exactly(table_bytes - 4)
    sizes = struct.unpack("<%dI" % segment_count, table[4 : 4 + 4 * segment_count])
    return table + read_exactly(8 * sum(sizes))


def call(addresses, kind, payload, deadline_seconds=10.0):
    deadline = time.monotonic() + deadline_seconds
    client_id = random.getrandbits(64)
    target = 0
    request_id = 0
    last_problem = "no attempt"
    while time.monotonic() < deadline:
        host, port = addresses[target % len(addresses)].rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=2) as sock:
                sock.sendall(SCHEMA.ConnectionPreamble.new_message(client=client_id).to_bytes())
                request_id += 1
                request = SCHEMA.ClientRequest.new_message(requestId=request_id)
                setattr(request, kind, payload)
                sock.sendall(request.to_bytes())
                with SCHEMA.ClientResponse.from_bytes(read_frame(sock)) as response:
                    which = response.which()
                    if which == "applied":
                        return bytes(response.applied)
                    if which == "notLeader":
                        hint = response.notLeader.leaderAddress
                        last_problem = "redirected to %s" % hint
                        if hint in addresses:
                            target = addresses.index(hint)
                            continue
                        target += 1
                    elif which == "unknownLeader":
                        last_problem = "no leader known"
                        time.sleep(0.05)
                    elif which == "rejected":
                        raise SystemExit("rejected: %s" % response.rejected.message)
                    else:
                        raise SystemExit("unexpected answer: %s" % which)
        except (OSError, ConnectionError) as error:
            last_problem = str(error)
            target += 1
            time.sleep(0.05)
    raise SystemExit("no answer within %.0f s: %s" % (deadline_seconds, last_problem))


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("propose", "query"):
        raise SystemExit(__doc__)
    reply = call(sys.argv[3:], sys.argv[1], sys.argv[2].encode())
    sys.stdout.write(reply.decode("utf-8", "replace") + "\n")


if __name__ == "__main__":
    main()
