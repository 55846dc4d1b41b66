"""Parsing and printing of durations, sizes and counts used across the toolkit."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_duration(text: str) -> float:
    """Seconds in '30s', '5m', '2h', '1d', '250ms' or a bare number of seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 2h)")
    unit = (m.group(2) or "s").lower()
    return float(m.group(1)) * _DURATION_FACTORS[unit]


def parse_size(text: str | int) -> int:
    """Bytes in '16GB', '512MiB', '8g', '1024kB' or a bare number of bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 16GB, 512MB)")
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * _SIZE_FACTORS[unit])


def pg_memory_to_kb(value: str, unit: str | None = None) -> int:
    """kB in a PostgreSQL memory setting: '128MB', '4096' with a pg_settings unit like '8kB'."""
    text = str(value).strip().strip("'")
    m = re.match(r"^(\d+)\s*(kB|MB|GB|TB|B)?$", text)
    if not m:
        raise ValueError(f"not a PostgreSQL memory value: {value!r}")
    number = int(m.group(1))
    suffix = m.group(2)
    if suffix:
        return {
            "B": number // 1024,
            "kB": number,
            "MB": number * 1024,
            "GB": number * 1024**2,
            "TB": number * 1024**3,
        }[suffix]
    if unit:
        um = re.match(r"^(\d*)\s*(kB|MB|GB|B)$", unit)
        if um:
            mult = int(um.group(1) or 1)
            base = {"B": 1 / 1024, "kB": 1, "MB": 1024, "GB": 1024**2}[um.group(2)]
            return int(number * mult * base)
    return number


def format_kb(kb: int) -> str:
    """PostgreSQL's own style: the largest unit without loss of resolution (GB, MB, kB)."""
    if kb % (1024 * 1024) == 0 and kb:
        return f"{kb // (1024 * 1024)}GB"
    if kb % 1024 == 0 and kb:
        return f"{kb // 1024}MB"
    return f"{kb}kB"


def format_bytes(n: float) -> str:
    """Human bytes with binary units, one decimal."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def format_age(seconds: float | None) -> str:
    """A short age: 45s, 12m05s, 3h02m, 2d04h; '-' when unknown."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def format_seconds_setting(seconds: float) -> str:
    """A PostgreSQL duration setting literal: '30s', '5min', '250ms'."""
    if seconds == 0:
        return "0"
    if seconds < 1 or seconds != int(seconds):
        return f"{int(seconds * 1000)}ms"
    s = int(seconds)
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}min"
    return f"{s}s"
