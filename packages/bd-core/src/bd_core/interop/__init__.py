"""Attacked models made by other tools, brought into bd without running their code."""

from bd_core.interop.backdoorbench import Record, load_restricted, read_record

__all__ = ["Record", "load_restricted", "read_record"]
