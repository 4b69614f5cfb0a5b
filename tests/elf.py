"""Reading an executable's ELF program headers with the stdlib: whether it needs a
program loader (the CNI plugin must not: nodes may have no libraries at all)."""

from __future__ import annotations

import struct
from pathlib import Path

PT_DYNAMIC, PT_INTERP = 2, 3


def program_header_types(path: Path) -> list[int]:
    """The p_type of every program header of an ELF file."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    else:
        (phoff,) = struct.unpack_from(order + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 0x2A)
    return [struct.unpack_from(order + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]


def is_static(path: Path) -> bool:
    """An ELF executable that names no program loader and loads no shared library: it
    runs on any Linux of its architecture."""
    if path.read_bytes()[:4] != b"\x7fELF":
        return False
    types = program_header_types(path)
    return bool(types) and PT_INTERP not in types and PT_DYNAMIC not in types
