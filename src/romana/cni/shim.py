"""The CNI plugin's protocol, in Python: the reference for ``plugin.c``, run by the console
scripts ``romana-cni`` and ``romana-ipam`` (:mod:`romana.cni.cli`).

What nodes run is ``plugin.c`` built statically (``romana-cni install`` copies it): a
runtime starts one process per CNI call, and a static executable needs nothing on the
node (no Python, no shared library) and starts in about a millisecond. This module does
exactly what that executable does, byte for byte (``tests/test_cni_plugin.py`` runs both
on the same inputs); change both together. It imports only modules the interpreter has
loaded anyway (``posix``, ``sys``), plus ``_socket`` and, only while waiting for an agent,
``time``: the console scripts and ``benchmarks/cni_startup_bench.py`` run it.

The plugin hands the request unparsed to the host agent over a Unix socket; the agent
(``romana.cni.server``) does the work in-process with the romanad connection and netlink
sockets it already holds. Wire format, one request per connection, each direction ending
at EOF::

    request   b"ROMANA-CNI/1\\0" MODE b"\\0" (b"CNI_NAME=value\\0")* b"\\0" STDIN
    response  EXIT_CODE b"\\n" STDOUT

MODE is ``full`` (the ``romana`` plugin) or ``ipam`` (``romana-ipam``). The plugin answers
only what must work without the agent: ``VERSION``, a missing ``CNI_COMMAND`` (code 4), a
configuration over 1 MiB (code 7), and the error when the agent cannot be reached (code 11
"try again later", or 50 "not available" for ``STATUS``). A socket that is missing or
refuses connections (the agent restarting or being upgraded) is tried again, 50 ms
doubling to 1 s apart, for ``agent_wait_seconds`` (default 60; never for ``STATUS``).
"""

import posix
import sys

MAGIC = b"ROMANA-CNI/1\0"
DEFAULT_SOCKET = b"/run/romana/cni.sock"
# romana.wire.CNI_VERSIONS: the shim imports nothing of romana; a test checks they agree.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
_SUPPORTED_BYTES = tuple(v.encode() for v in SUPPORTED_VERSIONS)
TIMEOUT = 55.0  # seconds per send or receive; runtimes usually give a CNI call minutes
TRY_AGAIN_LATER, NOT_AVAILABLE, INVALID_ENV, INVALID_CONFIG = 11, 50, 4, 7
MAX_CONFIG = 1 << 20  # a network configuration, prevResult included, is a few KiB
DEFAULT_AGENT_WAIT = 60  # seconds to wait for a restarting agent
MAX_AGENT_WAIT = 600  # config.py refuses more; here a larger value means the default
FIRST_RETRY, LAST_RETRY = 0.05, 1.0  # seconds between connection attempts
# ENOENT (no socket yet), ECONNREFUSED (a stale socket file), EAGAIN (its listen backlog is
# full: an agent that just started and is not accepting yet)
_RETRIED = (2, 111, 11)
_ESCAPES = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n"}
_ESCAPES |= {b"r": b"\r", b"t": b"\t"}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def run(mode: str) -> int:
    """Serve one CNI invocation (environment + stdin); returns the exit status."""
    config = _read_all(0)
    command = posix.environ.get(b"CNI_COMMAND", b"")
    version = string_field(config, "cniVersion") or LATEST.encode()
    if command == b"VERSION":
        answer = version.decode() if version in _SUPPORTED_BYTES else LATEST
        supported = ",".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
        _write(f'{{"cniVersion":"{answer}","supportedVersions":[{supported}]}}\n'.encode())
        return 0
    if not command:
        return _fail(
            version,
            INVALID_ENV,
            b"CNI_COMMAND is not set",
            b"this program is a CNI plugin: a container runtime runs it",
        )
    if len(config) > MAX_CONFIG:
        return _fail(
            version,
            INVALID_CONFIG,
            b"the network configuration is %d bytes, over %d" % (len(config), MAX_CONFIG),
            b"a CNI network configuration is a small JSON document",
        )
    path = string_field(config, "agent_socket") or DEFAULT_SOCKET
    is_status = command == b"STATUS"
    # STATUS asks whether the network is ready now: answer at once, never after a wait.
    wait = 0 if is_status else integer_field(config, "agent_wait_seconds")
    env = b"".join(k + b"=" + v + b"\0" for k, v in posix.environ.items() if k.startswith(b"CNI_"))
    request = MAGIC + mode.encode() + b"\0" + env + b"\0" + config
    unavailable = NOT_AVAILABLE if is_status else TRY_AGAIN_LATER
    try:
        reply = exchange(path, request, wait)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return _fail(
            version,
            unavailable,
            b"romana-agent is not reachable at " + path,
            reason.encode() + b"; is romana-agent running with --cni-socket?",
        )
    code, _, stdout = reply.partition(b"\n")
    if not code.isdigit():
        return _fail(
            version,
            unavailable,
            b"romana-agent closed the connection without an answer",
            b"socket " + path + b"; the agent may have restarted: try again",
        )
    _write(stdout)
    return int(code)


def exchange(path: bytes, request: bytes, wait: float = 0) -> bytes:
    """Connect, send the request, close our half, read the whole answer. A socket that is
    missing or refuses connections is tried again until ``wait`` seconds have passed."""
    import _socket  # the C module: ``socket`` would pull in enum, selectors, ...

    deadline, delay = None, FIRST_RETRY
    while True:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            break
        except OSError as exc:
            sock.close()
            if exc.errno not in _RETRIED or wait <= 0:
                raise
            import time  # builtin, and only an agent that is away pays for it

            deadline = deadline or time.monotonic() + wait
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(delay, left))
            delay = min(delay * 2, LAST_RETRY)
    try:
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def _field_value(config: bytes, key: str) -> int:
    """Where the value of the first ``"key":`` starts (blanks skipped), or -1. A ``"key"``
    that no colon follows is a string value, not the key: look further."""
    quoted = b'"' + key.encode() + b'"'
    at = config.find(quoted)
    while at >= 0:
        i = _skip_space(config, at + len(quoted))
        if config[i : i + 1] == b":":
            return _skip_space(config, i + 1)
        at = config.find(quoted, at + 1)
    return -1


def string_field(config: bytes, key: str) -> bytes | None:
    """The string value of the first ``"key":``, found by a text search (the runtime's
    configuration has it once; no JSON parser needed), JSON escapes decoded; None when
    absent, not a string, or malformed."""
    i = _field_value(config, key)
    if i < 0 or config[i : i + 1] != b'"':
        return None
    end = config.find(b'"', i + 1)
    if end > 0 and b"\\" not in config[i + 1 : end]:
        return config[i + 1 : end]  # the usual case: nothing escaped
    out = bytearray()
    i += 1
    while i < len(config):
        ch = config[i : i + 1]
        if ch == b'"':
            return bytes(out)
        if ch != b"\\":
            out += ch
        elif (escape := config[i + 1 : i + 2]) in _ESCAPES:
            out += _ESCAPES[escape]
            i += 1
        elif escape == b"u" and _is_hex4(config, i + 2):
            point = int(config[i + 2 : i + 6], 16)
            i += 5
            if (
                0xD800 <= point < 0xDC00
                and config[i + 1 : i + 3] == b"\\u"
                and _is_hex4(config, i + 3)
                and 0xDC00 <= (low := int(config[i + 3 : i + 7], 16)) < 0xE000
            ):
                point = 0x10000 + ((point - 0xD800) << 10) + (low - 0xDC00)
                i += 6
            out += chr(point).encode("utf-8", "surrogatepass")
        else:
            return None
        i += 1
    return None  # unterminated


def _is_hex4(data: bytes, i: int) -> bool:
    digits = data[i : i + 4]
    return len(digits) == 4 and all(d in _HEX for d in digits)


def integer_field(config: bytes, key: str, default: int = DEFAULT_AGENT_WAIT) -> int:
    """``"key": N``, N a plain integer from 0 to MAX_AGENT_WAIT; anything else: default."""
    i = end = _field_value(config, key)
    if i < 0:
        return default
    while config[end : end + 1].isdigit() and end - i < 12:
        end += 1
    if end == i or config[end : end + 1] in (b".", b"e", b"E") or config[end : end + 1].isdigit():
        return default
    value = int(config[i:end])
    return value if value <= MAX_AGENT_WAIT else default


def _skip_space(data: bytes, i: int) -> int:
    while data[i : i + 1] in (b" ", b"\t", b"\r", b"\n"):
        i += 1
    return i


def error_object(version: bytes, code: int, msg: bytes, details: bytes) -> bytes:
    """A CNI error object (the runtime reads it from stdout), JSON by hand: no json import."""
    return b'{"cniVersion":%s,"code":%d,"msg":%s,"details":%s}\n' % (
        _quote(version),
        code,
        _quote(msg),
        _quote(details),
    )


def _quote(text: bytes) -> bytes:
    """A JSON string; bytes that are not UTF-8 become U+FFFD (as plugin.c does)."""
    out = ['"']
    for ch in text.decode("utf-8", "replace"):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out).encode()


def _fail(version: bytes, code: int, msg: bytes, details: bytes) -> int:
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


if __name__ == "__main__":
    sys.exit(run("ipam" if sys.argv[0].rpartition("/")[2] == "romana-ipam" else "full"))
