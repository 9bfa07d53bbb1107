"""How the compiled extension must link the C++ runtime, and a check that it did (stdlib only:
setup.py loads this file before anything is built).

torch's libraries use the process's shared libstdc++.so.6. An extension that carries a second,
static copy splits the C++ runtime's state in two, and a TORCH_CHECK whose message formats a
number then crashes the process (SIGSEGV in std::ostream::_M_insert<long>) instead of raising.
That happened with the relocated GCC of the H200 lent on 2026-12-04: /opt/gcc/bin/g++ puts its
own library folder first, where the `libstdc++.so` link is relative and does not resolve, so the
linker silently took `libstdc++.a` from that folder (bench/RESULTS.md, GPU section).
"""

from __future__ import annotations

import struct
from pathlib import Path

# Named by file name and before the compiler's own libraries, the shared runtime satisfies every
# symbol, so no member of any libstdc++.a is linked in, whichever folder the toolchain searches first.
DYNAMIC_LIBSTDCXX = ["-Wl,--push-state,--no-as-needed", "-l:libstdc++.so.6", "-Wl,--pop-state"]

_SHT_DYNAMIC, _DT_NEEDED = 6, 1


def needed_libraries(path: str | Path) -> list[str]:
    """The DT_NEEDED entries of an ELF64 little-endian shared object (what `readelf -d` lists);
    [] for any other file."""
    with open(path, "rb") as f:

        def read(offset: int, size: int) -> bytes:
            f.seek(offset)
            return f.read(size)

        header = read(0, 64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return []
        section_offset = struct.unpack_from("<Q", header, 0x28)[0]
        entry_size, count = struct.unpack_from("<HH", header, 0x3A)
        table = read(section_offset, entry_size * count)
        # (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * entry_size) for i in range(count)]
        names = []
        for _, kind, _, _, offset, size, link, _, _, _ in sections:
            if kind != _SHT_DYNAMIC:
                continue
            strings = read(sections[link][4], sections[link][5])  # sh_link: the string table of the names
            dynamic = read(offset, size)
            for at in range(0, len(dynamic) - 15, 16):
                tag, value = struct.unpack_from("<qQ", dynamic, at)
                if tag == _DT_NEEDED:
                    names.append(strings[value : strings.index(b"\0", value)].decode())
        return names


def static_libstdcxx_error(path: str | Path) -> str | None:
    """Why the shared object at `path` must not be loaded next to torch, or None when it is fine
    (it needs libstdc++.so.6, or it is not an ELF object needing anything)."""
    needed = needed_libraries(path)
    if not needed or any(name.startswith("libstdc++.so") for name in needed):
        return None
    return (
        f"{path} has libstdc++ linked in statically (it needs only {', '.join(needed)}), so an error "
        f"raised inside it would crash Python; rebuild it with this setup.py, which links the shared "
        f"libstdc++.so.6, or with a compiler whose -lstdc++ finds it (e.g. CXX=/usr/bin/g++)"
    )
