"""Which characters client-chosen identifiers (subject ids, key names) may hold.

Identifiers end up in logs, the audit view and the console, where some characters lie about
what is written: C1 controls (U+0085 is a line break to some readers), line and paragraph
separators, bidi overrides and isolates (U+202E shows ``evil\u202egpj.exe`` reversed) and
zero-width characters (two ids that look the same but are not). These are refused with a
message naming the character; every other printable character, in any script, is allowed.
C0 controls and DEL are refused by the schemas' patterns already.
"""

from __future__ import annotations

import unicodedata

__all__ = [
    "RESERVED_KEY_NAMES",
    "check_key_name",
    "check_new_subject_id",
    "check_subject_id",
    "spoofing_character",
]

# The audit log's labels for actions without a key: a key must not be mistaken for them.
RESERVED_KEY_NAMES = frozenset({"(command line)", "(no key)"})

_RANGES = (
    (0x00, 0x1F, "a control character"),
    (0x7F, 0x9F, "a control character"),
    (0x200B, 0x200D, "a zero-width character"),
    (0x2028, 0x2029, "a line or paragraph separator"),
    (0x202A, 0x202E, "a bidirectional override"),
    (0x2060, 0x2060, "a zero-width character"),
    (0x2066, 0x2069, "a bidirectional isolate"),
    (0xFEFF, 0xFEFF, "a zero-width character"),
)


def spoofing_character(value: str) -> str | None:
    """Why ``value`` is refused (naming its first offending character), or None."""
    for ch in value:
        code = ord(ch)
        for low, high, kind in _RANGES:
            if low <= code <= high:
                name = unicodedata.name(ch, "")
                label = f"U+{code:04X}" + (f" ({name})" if name else "")
                return f"{label}, {kind} that could disguise what logs and the audit show"
    return None


def check_subject_id(value: str) -> str:
    problem = spoofing_character(value)
    if problem is not None:
        raise ValueError(f"a subject id must not contain {problem}")
    return value


def check_new_subject_id(value: str) -> str:
    """``check_subject_id`` for an id being created: ``/`` is refused as well, since
    ``/subjects/{id}/faces`` could not be told from a subject named ``x/faces``. Ids with
    ``/`` enrolled by older versions stay usable (written ``%2F`` in URLs)."""
    if "/" in value:
        raise ValueError(
            "a new subject id must not contain '/' (it would read as a path in "
            "/subjects/{id}/...); use another separator such as '-' or ':'"
        )
    return check_subject_id(value)


def check_key_name(value: str) -> str:
    """``value`` if it is a usable key name; ``ValueError`` with the reason otherwise."""
    stripped = value.strip()  # str.strip knows Unicode spaces: NBSP, U+3000, U+2028...
    if not stripped:
        raise ValueError("a key name must contain a visible character, not only spaces")
    if len(stripped) > 128:
        raise ValueError("a key name is at most 128 characters")
    problem = spoofing_character(value)
    if problem is not None:
        raise ValueError(f"a key name must not contain {problem}")
    if stripped in RESERVED_KEY_NAMES:
        raise ValueError(
            f"{stripped!r} is reserved: the audit log uses it for actions taken without a key"
        )
    return value
