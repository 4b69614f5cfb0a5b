"""The CNI plugin executable (``romana``, ``romana-ipam``): a thin shim to the host agent.

Why a shim. A runtime starts one process per CNI call, and a Python process pays for every
import: pyroute2 ~145 ms, httpx or pydantic ~75 ms, even ``json`` and ``socket`` ~10 ms
each (they pull in ``re`` and ``enum``). So this file imports only modules the interpreter
has loaded anyway (``posix``, not ``os``: ~0.9 ms under ``-S``), plus ``_socket``
(~0.6 ms), and hands the request unparsed to the host
agent over a Unix socket; the agent (``romana.cni.server``) does the work in-process with
the romanad connection and netlink sockets it already holds. ``romana-cni install`` puts
a launcher into the CNI bin dir that runs this module from its bytecode cache with
``python -IS`` (no ``site``, no package import). Keep it that way: builtin modules only
at module level (``posix``, ``sys``; not even ``__future__``), no ``romana`` imports (the
launcher imports this file as a top-level module); ``tests/test_cni_units.py`` checks.

Wire format, one request per connection, each direction ending at EOF::

    request   b"ROMANA-CNI/1\\0" MODE b"\\0" (b"CNI_NAME=value\\0")* b"\\0" STDIN
    response  EXIT_CODE b"\\n" STDOUT

MODE is ``full`` (the ``romana`` plugin) or ``ipam`` (``romana-ipam``). The shim answers
only what must work without the agent: ``VERSION``, and the error object when the agent
cannot be reached (code 11 "try again later", or 50 "not available" for ``STATUS``).
"""

import posix
import sys

MAGIC = b"ROMANA-CNI/1\0"
DEFAULT_SOCKET = "/run/romana/cni.sock"
# romana.wire.CNI_VERSIONS: the shim imports nothing of romana; a test checks they agree.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
TIMEOUT = 55.0  # seconds; runtimes usually give a CNI call a few minutes
TRY_AGAIN_LATER, NOT_AVAILABLE, INVALID_ENV, INVALID_CONFIG = 11, 50, 4, 7
MAX_CONFIG = 1 << 20  # a network configuration, prevResult included, is a few KiB


def run(mode: str) -> int:
    """Serve one CNI invocation (environment + stdin); returns the exit status."""
    config = _read_all(0)
    command = posix.environ.get(b"CNI_COMMAND", b"").decode()
    version = string_field(config, "cniVersion") or LATEST
    if command == "VERSION":
        answer = version if version in SUPPORTED_VERSIONS else LATEST
        supported = ",".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
        _write(f'{{"cniVersion":"{answer}","supportedVersions":[{supported}]}}\n'.encode())
        return 0
    if not command:
        return _fail(
            version,
            INVALID_ENV,
            "CNI_COMMAND is not set",
            "this program is a CNI plugin: a container runtime runs it",
        )
    if len(config) > MAX_CONFIG:
        return _fail(
            version,
            INVALID_CONFIG,
            f"the network configuration is {len(config)} bytes, over {MAX_CONFIG}",
            "a CNI network configuration is a small JSON document",
        )
    path = string_field(config, "agent_socket") or DEFAULT_SOCKET
    env = b"".join(k + b"=" + v + b"\0" for k, v in posix.environ.items() if k.startswith(b"CNI_"))
    request = MAGIC + mode.encode() + b"\0" + env + b"\0" + config
    unavailable = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
    try:
        reply = exchange(path, request)
    except OSError as exc:
        return _fail(
            version,
            unavailable,
            f"romana-agent is not reachable at {path}",
            f"{exc.strerror or exc}; is romana-agent running with --cni-socket?",
        )
    code, _, stdout = reply.partition(b"\n")
    if not code.isdigit():
        return _fail(
            version,
            unavailable,
            "romana-agent closed the connection without an answer",
            f"socket {path}; the agent may have restarted: try again",
        )
    _write(stdout)
    return int(code)


def exchange(path: str, request: bytes) -> bytes:
    """Send the request, close our half, read the whole answer."""
    import _socket  # the C module: ``socket`` would pull in enum, selectors, ...

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def string_field(config: bytes, key: str) -> str | None:
    """The string value of the first ``"key": "..."`` in a JSON text, without a parser.

    Good for the two flat fields the shim needs (``cniVersion``, ``agent_socket``): the
    runtime's config has them once (``agent_socket`` at the top or in ``ipam``). Anything
    unusual (escapes, a non-string value) falls back to the json module.
    """
    quoted = b'"' + key.encode() + b'"'
    at = config.find(quoted)
    if at < 0:
        return None
    i = _skip_space(config, at + len(quoted))
    if config[i : i + 1] != b":":
        return _slow_field(config, key)
    i = _skip_space(config, i + 1)
    end = config.find(b'"', i + 1)
    if config[i : i + 1] != b'"' or end < 0 or b"\\" in config[i + 1 : end]:
        return _slow_field(config, key)
    return config[i + 1 : end].decode("utf-8", "replace")


def _skip_space(data: bytes, i: int) -> int:
    while data[i : i + 1] in (b" ", b"\t", b"\r", b"\n"):
        i += 1
    return i


def _slow_field(config: bytes, key: str) -> str | None:
    import json

    try:
        document = json.loads(config)
    except ValueError:
        return None
    for scope in (document, document.get("ipam") if isinstance(document, dict) else None):
        if isinstance(scope, dict) and isinstance(scope.get(key), str):
            return str(scope[key])
    return None


def error_object(version: str, code: int, msg: str, details: str) -> bytes:
    """A CNI error object (the runtime reads it from stdout), JSON by hand: no json import."""
    return (
        f'{{"cniVersion":{_quote(version)},"code":{code},"msg":{_quote(msg)},'
        f'"details":{_quote(details)}}}\n'
    ).encode()


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _fail(version: str, code: int, msg: str, details: str) -> int:
    _write(error_object(version, code, msg, details))
    return 1


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := posix.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(1, view) :]


def main() -> None:
    """Console script ``romana-cni``: the full plugin; ``romana-cni install ...`` installs."""
    if len(sys.argv) > 1 and not posix.environ.get(b"CNI_COMMAND"):
        from romana.cni.install import main as install

        sys.exit(install(sys.argv[1:]))
    sys.exit(run("full"))


def main_ipam() -> None:
    """Console script ``romana-ipam``: the IPAM-only plugin."""
    sys.exit(run("ipam"))


if __name__ == "__main__":
    sys.exit(run("ipam" if "ipam" in sys.argv[0].rpartition("/")[2] else "full"))
