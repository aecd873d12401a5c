#!/usr/bin/env python3
"""Stand-in for other programs on the host: holds the addresses the tests once hard-coded, and
ports spread over the range the tests take RTP and peer ports from, and answers every SIP
request it gets with a forged "SIP/2.0 200 OK" (the request's own Via, From, To, Call-ID and
CSeq, so that a SIP client would take it for the answer it waits for).

    python3 tests/occupy_ports.py &   # prints "holding N sockets" once it is ready
    cargo test
    kill %1

`cargo test` must pass meanwhile: no test may depend on a fixed port, nor take this program's
answer for the bridge's. Loopback only. Stops by itself after --seconds (default 3600).
"""

import argparse
import selectors
import socket
import sys
import time

# (transport, address, port): what the tests, the README and the SIPp examples used to name.
FIXED = []
for proto in ("udp", "tcp"):
    FIXED += [(proto, "127.0.0.1", 5060), (proto, "127.0.0.1", 5070)]
    # tests/sipp.rs: 127.0.0.N:5060 (bridge), :5070 (SIPp), :5080 and :4444 (baresip), :5090.
    for n in range(31, 50):
        FIXED += [(proto, f"127.0.0.{n}", p) for p in (5060, 5070, 5080, 5090)]
    # tests/e2e.rs, tests/upstream_faults.rs, tests/kamailio.rs: 150xx and their offsets.
    for base in list(range(15061, 15071)) + list(range(15081, 15090)) + list(range(15091, 15096)):
        FIXED += [(proto, "127.0.0.1", base + k) for k in (0, 100, 200, 300, 400)]
FIXED += [("tcp", "127.0.0.1", 9091), ("tcp", "127.0.0.39", 4444)]

# RTP ranges the tests used (whole), and one port in 37 of 20000-32767, on every address.
HELD_RANGES = [(30000, 30099), (31000, 31099)]
SPREAD = range(20000, 32768, 37)

FORGED = "SIP/2.0 200 OK\r\n{headers}Server: occupy_ports.py (not the bridge)\r\nContent-Length: 0\r\n\r\n"


def forged_answer(data: bytes) -> bytes:
    text = data.decode("utf-8", "replace")
    if text.startswith("SIP/2.0"):
        return b""  # a response: nothing to answer
    headers = ""
    for line in text.split("\r\n")[1:]:
        if not line:
            break
        name = line.split(":", 1)[0].strip().lower()
        if name in ("via", "v", "from", "f", "call-id", "i", "cseq"):
            headers += line + "\r\n"
        elif name in ("to", "t"):
            headers += line + (";tag=forged" if ";tag=" not in line else "") + "\r\n"
    return FORGED.format(headers=headers).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3600.0)
    args = parser.parse_args()
    sel = selectors.DefaultSelector()
    held = []
    failed = []

    def hold(proto: str, ip: str, port: int, answer: bool) -> None:
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((ip, port))
        except OSError as e:
            failed.append(f"{proto} {ip}:{port}: {e}")
            s.close()
            return
        if proto == "tcp":
            s.listen(16)
        s.setblocking(False)
        if answer:
            sel.register(s, selectors.EVENT_READ, ("udp-answer" if proto == "udp" else "accept"))
        held.append(s)

    for proto, ip, port in FIXED:
        hold(proto, ip, port, answer=True)
    for first, last in HELD_RANGES:
        for port in range(first, last + 1):
            hold("udp", "0.0.0.0", port, answer=True)
    for port in SPREAD:
        if not any(a <= port <= b for a, b in HELD_RANGES):
            hold("udp", "0.0.0.0", port, answer=True)
    print(f"holding {len(held)} sockets; could not bind {len(failed)}", flush=True)
    for f in failed[:10]:
        print(f"  {f}", file=sys.stderr)

    answered = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            s, what = key.fileobj, key.data
            try:
                if what == "udp-answer":
                    data, peer = s.recvfrom(65535)
                    reply = forged_answer(data)
                    if reply:
                        s.sendto(reply, peer)
                        answered += 1
                elif what == "accept":
                    conn, _ = s.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "tcp-answer")
                else:
                    data = s.recv(65535)
                    if not data:
                        sel.unregister(s)
                        s.close()
                        continue
                    reply = forged_answer(data) or b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                    s.send(reply)
                    answered += 1
            except OSError:
                pass
    print(f"answered {answered} requests", flush=True)


if __name__ == "__main__":
    main()
