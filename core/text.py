"""Text rules that every layer applies the same way."""

from __future__ import annotations

import unicodedata

# Characters that render as nothing: soft hyphen, joiners, directional marks, variation selectors,
# Hangul fillers, tag characters. Screening's normaliser removes the same set.
INVISIBLE_RANGES = [
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0x1D173, 0x1D17A), (0xE0000, 0xE007F),
    (0xE0100, 0xE01EF),
]
INVISIBLE: dict[int, None] = {cp: None for lo, hi in INVISIBLE_RANGES for cp in range(lo, hi + 1)}


def is_blank(text: str) -> bool:
    """Whether nothing is left of ``text`` once NFKC-normalised and stripped of invisible characters
    and combining marks: only control, format, zero-width or space characters. Such a prompt says
    nothing, and is refused before any policy is asked."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).translate(INVISIBLE))
    return all(unicodedata.category(ch)[0] in "CZ" for ch in decomposed if not unicodedata.combining(ch))
