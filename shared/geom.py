"""Integer pixel boxes (0-based, exclusive upper bounds) and FITS section parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Box", "parse_fits_section"]

_SECTION = re.compile(r"^\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*$")


def parse_fits_section(section: str) -> tuple[Box, bool, bool]:
    """Parse a FITS/IRAF section ``[x1:x2,y1:y2]`` (1-based, inclusive).

    Returns
    -------
    box : `Box`
        The 0-based box covered by the section.
    flip_x, flip_y : `bool`
        True where the range is reversed (x1 > x2 or y1 > y2).

    Raises
    ------
    ValueError
        If the text is not a section.
    """
    m = _SECTION.match(section)
    if not m:
        raise ValueError(f"not a FITS section: {section!r}")
    x1, x2, y1, y2 = (int(v) for v in m.groups())
    flip_x, flip_y = x1 > x2, y1 > y2
    xa, xb = sorted((x1, x2))
    ya, yb = sorted((y1, y2))
    return Box(xa - 1, ya - 1, xb - xa + 1, yb - ya + 1), flip_x, flip_y


@dataclass(frozen=True)
class Box:
    """An integer pixel box: ``x0 <= x < x0 + width``, ``y0 <= y < y0 + height`` (0-based)."""

    x0: int
    y0: int
    width: int
    height: int

    @property
    def x1(self) -> int:
        """Exclusive upper x bound."""
        return self.x0 + self.width

    @property
    def y1(self) -> int:
        """Exclusive upper y bound."""
        return self.y0 + self.height

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(slice_y, slice_x)`` for indexing a numpy ``[y, x]`` array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def area(self) -> int:
        """Number of pixels."""
        return max(self.width, 0) * max(self.height, 0)

    def is_empty(self) -> bool:
        """True if the box has no pixels."""
        return self.width <= 0 or self.height <= 0

    @classmethod
    def from_fits_section(cls, section: str) -> Box:
        """Box of a FITS section, ignoring the direction (see `parse_fits_section`)."""
        return parse_fits_section(section)[0]

    @classmethod
    def from_shape(cls, shape: tuple[int, int]) -> Box:
        """Box ``(0, 0, nx, ny)`` of an array shape ``(ny, nx)``."""
        return cls(0, 0, int(shape[1]), int(shape[0]))

    def to_fits_section(self) -> str:
        """``[x1:x2,y1:y2]``, 1-based inclusive."""
        return f"[{self.x0 + 1}:{self.x1},{self.y0 + 1}:{self.y1}]"

    def contains(self, x: float, y: float) -> bool:
        """True if the point (pixel centres at integers) lies in the box."""
        return self.x0 - 0.5 <= x < self.x1 - 0.5 and self.y0 - 0.5 <= y < self.y1 - 0.5

    def grow(self, n: int) -> Box:
        """Box grown by ``n`` pixels on every side (shrunk if negative)."""
        return Box(self.x0 - n, self.y0 - n, self.width + 2 * n, self.height + 2 * n)

    def shift(self, dx: int, dy: int) -> Box:
        """Box moved by ``(dx, dy)``."""
        return Box(self.x0 + dx, self.y0 + dy, self.width, self.height)

    def clip(self, other: Box) -> Box:
        """Intersection with ``other`` (empty boxes have zero width or height)."""
        x0, y0 = max(self.x0, other.x0), max(self.y0, other.y0)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        return Box(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))
