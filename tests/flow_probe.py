"""Run inside a test pod's namespace: a UDP listener that reports what reaches it, and a
sender that picks its own source port or forges its source address. Standard library only.

    listen PORT                       echo every datagram; print "SRC_IP SRC_PORT PAYLOAD"
    send DST PORT SPORT PAYLOAD       send from SPORT; print "echo" or "none" (1 s)
    spoof SRC DST PORT SPORT PAYLOAD  send a raw datagram claiming to come from SRC
"""

from __future__ import annotations

import socket
import struct
import sys


def listen(port: int) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, (ip, sport) = server.recvfrom(512)
        print(ip, sport, data.decode(errors="replace"), flush=True)
        server.sendto(data, (ip, sport))


def send(dst: str, port: int, sport: int, payload: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
        s.settimeout(1.0)
        s.sendto(payload.encode(), (dst, port))
        try:
            print("echo" if s.recv(512) == payload.encode() else "other")
        except OSError:
            print("none")


def spoof(src: str, dst: str, port: int, sport: int, payload: str) -> None:
    body = payload.encode()
    udp = struct.pack("!HHHH", sport, port, 8 + len(body), 0) + body  # no checksum (IPv4)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0x1234,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.sendto(header + udp, (dst, 0))
    print("sent")


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "listen":
        listen(int(args[0]))
    elif mode == "send":
        send(args[0], int(args[1]), int(args[2]), args[3])
    else:
        spoof(args[0], args[1], int(args[2]), int(args[3]), args[4])


if __name__ == "__main__":
    main()
