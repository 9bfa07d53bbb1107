"""Safetensors in and out, with a check before anything is parsed.

bd never unpickles a model file: a pickle or `torch.save` archive is refused with
a message that says how to convert it.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from bd_core.errors import UnsafeModelFile

MAX_HEADER = 100 * 1024 * 1024
_CONVERT = "convert it with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"


def check_safetensors(path: Path) -> None:
    """Raise UnsafeModelFile unless `path` is structurally a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise UnsafeModelFile(f"model file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len <= min(size - 8, MAX_HEADER) and head[8:9] == b"{":
            return  # 8-byte little-endian header length, then the JSON header: safetensors
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        raise UnsafeModelFile(f"{path} is a pickle / torch.save file; bd loads only safetensors: {_CONVERT}")
    raise UnsafeModelFile(f"{path} is not a safetensors file: {_CONVERT}")


def load_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and string metadata of a checked safetensors file."""
    check_safetensors(path)
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UnsafeModelFile(f"{path} is a damaged safetensors file: {e}") from None


def load_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a checked safetensors file, without reading its tensors."""
    check_safetensors(path)
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UnsafeModelFile(f"{path} is a damaged safetensors file: {e}") from None


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write atomically (temp file then rename) so a killed writer never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two processes may write the same model
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o666 & ~current_umask())  # safetensors writes 0600; a shared cache needs the umask's mode
    tmp.replace(path)


def write_atomically(path: Path, blob: bytes) -> None:
    """Write bytes whole or not at all; concurrent writers of one path each use their own temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def metadata_json(metadata: dict[str, str], key: str, path: Path) -> dict:
    try:
        return json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError):
        raise UnsafeModelFile(f"{path} lacks valid '{key}' metadata; was it written by bd?") from None
