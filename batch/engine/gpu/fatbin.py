"""What GPU code a shared library carries, read from its own file: the CUDA fat binaries in its `.nv_fatbin`
section (machine code per sm_XY, PTX per compute_XY with its PTX ISA version) and the sonames in its read-only
data (CTranslate2 dlopens cuBLAS by a name compiled in: "libcublas.so." followed by its CUDA major).

Only headers are read (a seek and a few bytes each), never the code itself, so a library of 80 MB is read in
milliseconds. The layouts are the ELF64 section headers and the fat binary headers nvcc writes (what
`cuobjdump --list-elf --list-ptx` lists): a fat binary is a 16-byte header (magic 0xBA55ED50, version, header
size, size of its entries), then entries, each a header (kind: 1 PTX, 2 machine code; its size; the PTX ISA
version; the arch) and its payload.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

FATBIN_MAGIC = 0xBA55ED50
FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, size of the entries that follow
# kind, version, header size, padded payload size, compressed size, (unused), PTX ISA minor, major, arch
ENTRY_HEADER = struct.Struct("<HHIQIIHHI")
KIND_PTX, KIND_SASS = 1, 2

ELF_MAGIC = b"\x7fELF"
ELF64, LITTLE_ENDIAN = 2, 1
SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")  # name, type, flags, address, offset, size, link, info, align, size


class UnreadableLibrary(Exception):
    """The file is not an ELF64 little-endian library whose sections can be read."""


@dataclass(frozen=True, order=True)
class GpuCode:
    """One entry of a fat binary: machine code for sm_`arch`, or PTX for compute_`arch` of PTX ISA `ptx_isa`."""

    kind: str  # "sass" or "ptx"
    arch: int  # 86 for sm_86 / compute_86, 100 for sm_100
    ptx_isa: tuple[int, int] | None = None  # (8, 7) for PTX ISA 8.7; None for machine code

    def __str__(self) -> str:
        if self.ptx_isa is None:
            return f"sm_{self.arch}"
        return f"compute_{self.arch} (PTX ISA {self.ptx_isa[0]}.{self.ptx_isa[1]})"


@dataclass(frozen=True)
class LibraryCode:
    """The GPU code of one library: how many fat binaries, the distinct entries across them, the cuBLAS it loads."""

    path: Path
    fatbins: int
    code: frozenset[GpuCode]
    cublas: str | None  # "libcublas.so.12"; None when the library names none (a CPU-only build)

    @property
    def sass(self) -> list[int]:
        return sorted(code.arch for code in self.code if code.kind == "sass")

    @property
    def ptx(self) -> list[GpuCode]:
        return sorted(code for code in self.code if code.kind == "ptx")


def read_library_code(path: Path) -> LibraryCode:
    """The fat binaries and the cuBLAS soname of the library at `path`. Raises UnreadableLibrary, OSError."""
    with path.open("rb") as file:
        sections = elf_sections(file)
        fatbin = sections.get(".nv_fatbin")
        entries = list(fatbin_entries(file, *fatbin)) if fatbin else []
        rodata = sections.get(".rodata")
        cublas = cublas_soname(read_at(file, *rodata)) if rodata else None
    fatbins = sum(1 for entry in entries if entry is None)
    return LibraryCode(path, fatbins, frozenset(entry for entry in entries if entry is not None), cublas)


def read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    data = file.read(size)
    if len(data) != size:
        raise UnreadableLibrary(f"truncated at offset {offset}")
    return data


def elf_sections(file: BinaryIO) -> dict[str, tuple[int, int]]:
    """{section name: (file offset, size)} of an ELF64 little-endian file."""
    header = read_at(file, 0, 64)
    if header[:4] != ELF_MAGIC or header[4] != ELF64 or header[5] != LITTLE_ENDIAN:
        raise UnreadableLibrary("not an ELF64 little-endian file")
    (table_offset,) = struct.unpack_from("<Q", header, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", header, 0x3A)
    table = read_at(file, table_offset, entry_size * count)
    headers = [SECTION_HEADER.unpack_from(table, index * entry_size) for index in range(count)]
    names = read_at(file, headers[names_index][4], headers[names_index][5])
    return {_name(names, header[0]): (header[4], header[5]) for header in headers}


def _name(names: bytes, start: int) -> str:
    return names[start : names.index(b"\0", start)].decode(errors="replace")


def fatbin_entries(file: BinaryIO, offset: int, size: int) -> Iterator[GpuCode | None]:
    """Each fat binary's entries in the section at `offset`; None marks the start of each fat binary."""
    position, end = offset, offset + size
    while position + FATBIN_HEADER.size <= end:
        magic, _, header_size, entries_size = FATBIN_HEADER.unpack(read_at(file, position, FATBIN_HEADER.size))
        if magic != FATBIN_MAGIC:  # padding between fat binaries (each is 8-byte aligned)
            position += 8
            continue
        yield None
        entry, entries_end = position + header_size, position + header_size + entries_size
        while entry < entries_end:
            fields = ENTRY_HEADER.unpack(read_at(file, entry, ENTRY_HEADER.size))
            kind, _, entry_header_size, payload_size, _, _, isa_minor, isa_major, arch = fields
            if kind == KIND_SASS:
                yield GpuCode("sass", arch)
            elif kind == KIND_PTX:
                yield GpuCode("ptx", arch, (isa_major, isa_minor))
            entry += entry_header_size + payload_size
        position = entries_end


def cublas_soname(data: bytes) -> str | None:
    """The cuBLAS soname compiled into a library's read-only data ("libcublas.so.12"), or None."""
    found = re.search(rb"libcublas\.so\.(\d+)\0", data)
    return found.group(0)[:-1].decode() if found else None
