"""What runs inside each pod namespace of the policy e2e test: servers and a prober.

Servers: TCP and UDP on the ports given (UDP echoes). Prober: each line on stdin is a JSON
list of ``[ip, protocol, port]``; all are tried at once and the answer is one JSON line of
booleans (connected / echoed within the timeout). Standard library only.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor


def serve_tcp(port: int) -> None:
    server = socket.create_server(("0.0.0.0", port), backlog=128)
    while True:
        conn, _ = server.accept()
        conn.close()


def serve_udp(port: int) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", port))
    while True:
        data, peer = server.recvfrom(64)
        server.sendto(data, peer)


def probe(ip: str, protocol: str, port: int, timeout: float) -> bool:
    if protocol == "TCP":
        try:
            with socket.create_connection((ip, port), timeout=timeout):
                return True
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout / 2)
        for _ in range(2):  # one retry: a first datagram can wait on ARP
            try:
                s.sendto(b"ping", (ip, port))
                return s.recv(64) == b"ping"
            except OSError:
                continue
    return False


def main() -> None:
    ports = [int(p) for p in sys.argv[1].split(",") if p] if len(sys.argv) > 1 else []
    for port in ports:
        threading.Thread(target=serve_tcp, args=(port,), daemon=True).start()
        threading.Thread(target=serve_udp, args=(port,), daemon=True).start()
    print("ready", flush=True)
    with ThreadPoolExecutor(128) as pool:
        for line in sys.stdin:
            request = json.loads(line)
            timeout = float(request["timeout"])
            probes = request["probes"]
            results = list(pool.map(probe, *zip(*probes, strict=True), [timeout] * len(probes)))
            print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
