"""Whether an object's bytes are the media declared, and what they hold: the face of the media check.

`check(declared, size, fetch)` answers a `Verdict`: `completed` with the bytes' `Media` (ffprobe's
facts: duration, width, height, codecs by FFmpeg's names), or a refusal, `content_mismatch` (the
bytes are another format, or none) or `unreadable_media` (they begin as the type but do not decode
as it: a header with nothing behind it, a file cut short, anything a decoder refuses or raises).

The bytes are decoded, not just their headers read, and hostile bytes reach nothing: the decoders
(FFmpeg through PyAV, Pillow, fontTools) run in a child process (`lib/media/sandbox.py`) that holds no
client, token or setting, cannot open a socket or start a program, and is limited in memory, CPU time
and file writes. It asks its parent for byte ranges; the parent serves them from Storage within a
counted budget (`Budget`: bytes and reads), so the same bytes always get the same verdict.
docs/design-media.md says why it is built so, and what was measured.
"""

from __future__ import annotations

from lib.media.facts import Budget, Media, Usage, Verdict
from lib.media.sandbox import BUDGET, CheckTimedOut, EngineFailed, check

# The modules another package may import besides this face (lib/__init__.py).
FACE = ("facts", "mediatypes")

__all__ = ["BUDGET", "Budget", "CheckTimedOut", "EngineFailed", "Media", "Usage", "Verdict", "check"]
