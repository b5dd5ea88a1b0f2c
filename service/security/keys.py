"""API keys: random 256-bit tokens, shown once, stored only as SHA-256 hashes; and galleries.

A token is ``fsk_`` + 43 URL-safe base64 characters (32 bytes from ``secrets``). Only its
SHA-256 is stored: a database leak yields no usable key, and a plain hash is enough because the
token has 256 bits of entropy (salting and slow hashes exist for guessable passwords). A
presented token is hashed, looked up by hash, and the hashes are compared once more with
``hmac.compare_digest``, so no step compares secret bytes in variable time.

Scopes, one per role a client plays (README: API keys and scopes):

* ``enroll``: add faces and subjects (POST /enroll; organise and name the unknown-face pool).
* ``recognize``: verify, identify, embed.
* ``read``: list and read subjects and faces, their chips, the pool's clusters, and subject
  metadata in identify results (``include_metadata``).
* ``erase``: delete subjects, faces and pool clusters (GDPR erasure).
* ``metrics``: GET /metrics and the server-wide totals of /readyz.
* ``audit``: GET /audit.
* ``admin``: API keys and galleries only.

A key holds any set of them; none implies another (an admin can of course mint itself a key
with more). Before scopes were split, ``admin`` covered reading, erasure, the audit log and
metrics as well: keys stored then are given ``LEGACY_ADMIN`` when the store migrates (SQLite
schema 5, PostgreSQL 6), so every key keeps every power it had, while a key created now with
``admin`` alone manages keys and galleries only.

Galleries (namespaces). Every key belongs to one gallery: ``""`` (the default) or a name. A
gallery's subjects are stored under the internal id ``"\\x1f<gallery>\\x1f<subject_id>"``.
Clients can never send ``\\x1f`` (subject ids refuse control characters), so a client id can
neither collide with nor forge another gallery's, and no table, index or store interface had
to change. The prefix starting with ``\\x1f`` also sorts every named gallery's subjects before
the default gallery's (whose ids start at ``\\x20``), each gallery in one contiguous run, so
listing a gallery is one range scan.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from service.api.identifiers import check_key_name
from service.gallery.store.base import KeyRecord, SecurityStore

if TYPE_CHECKING:
    from service.config import Settings

__all__ = [
    "GALLERY_PATTERN",
    "LEGACY_ADMIN",
    "SCOPES",
    "TOKEN_PREFIX",
    "KeyRing",
    "Namespace",
    "hash_token",
    "new_token",
    "open_security_store",
    "validate_gallery",
    "validate_scopes",
]

SCOPES: tuple[str, ...] = ("enroll", "recognize", "read", "erase", "metrics", "audit", "admin")
# What ``admin`` meant before the scopes were split: the stores' migrations give it to every
# key stored with ``admin`` then (see the module docstring).
LEGACY_ADMIN: tuple[str, ...] = ("read", "erase", "metrics", "audit", "admin")
TOKEN_PREFIX = "fsk_"
GALLERY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_GALLERY_RE = re.compile(GALLERY_PATTERN)
SEP = "\x1f"
# Above every named gallery's ids ("\x1f" + [A-Za-z0-9_.-]... < "\x1f\x7f") and below every
# default-gallery id (which starts at "\x20").
_DEFAULT_LOWER = SEP + "\x7f"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Known scopes, deduplicated, in canonical order; ``ValueError`` otherwise."""
    wanted = {s.strip() for part in scopes for s in part.split(",") if s.strip()}
    unknown = wanted - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s) {sorted(unknown)}; choose from {list(SCOPES)}")
    if not wanted:
        raise ValueError(f"a key needs at least one scope of {list(SCOPES)}")
    return tuple(s for s in SCOPES if s in wanted)


def validate_gallery(gallery: str | None) -> str:
    if not gallery:
        return ""
    if not _GALLERY_RE.fullmatch(gallery):
        raise ValueError(
            "a gallery name is 1-64 characters of letters, digits, '_', '.', '-', starting "
            f"with a letter or digit; got {gallery!r}"
        )
    return gallery


def namespace_of(internal_id: str) -> str:
    """The ``Namespace.prefix`` of a stored subject id ("" for the default gallery): the
    gallery partitions its counts and impostor samples by it."""
    if internal_id.startswith(SEP):
        end = internal_id.find(SEP, 1)
        if end > 0:
            return internal_id[: end + 1]
    return ""


@dataclass(frozen=True)
class Namespace:
    """Maps a gallery's client-visible subject ids to stored ids and back."""

    gallery: str = ""

    @property
    def prefix(self) -> str:
        return f"{SEP}{self.gallery}{SEP}" if self.gallery else ""

    def internal(self, subject_id: str) -> str:
        if SEP in subject_id:  # the API refuses control characters before this point
            raise ValueError("a subject id cannot contain \\x1f")
        return self.prefix + subject_id

    def owns(self, internal_id: str) -> bool:
        if self.gallery:
            return internal_id.startswith(self.prefix)
        return not internal_id.startswith(SEP)

    def external(self, internal_id: str) -> str | None:
        """The client's id, or None when the stored subject belongs to another gallery."""
        if not self.owns(internal_id):
            return None
        return internal_id[len(self.prefix):]

    @property
    def list_after(self) -> str:
        """Listing starts after this stored id: the gallery's run is next in id order."""
        return self.prefix if self.gallery else _DEFAULT_LOWER


class KeyRing:
    """Create, list, revoke and check API keys in a ``SecurityStore``."""

    def __init__(self, store: SecurityStore) -> None:
        self.store = store
        self._enforced = False

    def enforced(self) -> bool:
        """True once any key was ever created (revoked keys count: revoking every key must
        not reopen the service to anonymous callers). Sticky: keys are never deleted."""
        if not self._enforced:
            self._enforced = self.store.key_count(active_only=False) > 0
        return self._enforced

    def create(
        self, name: str, scopes: list[str] | tuple[str, ...], gallery: str | None = None
    ) -> tuple[KeyRecord, str]:
        """A new key and its token (the only time the token exists outside the client)."""
        name = check_key_name(name).strip()
        token = new_token()
        record = KeyRecord(
            key_id="k_" + secrets.token_hex(6),
            name=name,
            key_hash=hash_token(token),
            scopes=validate_scopes(scopes),
            gallery=validate_gallery(gallery),
            created_at=_now(),
        )
        self.store.add_key(record)
        if record.gallery:  # `keys create --gallery` is one way a gallery comes to exist
            self.store.add_gallery(record.gallery, record.created_at)
        self._enforced = True
        return record, token

    def list(self, gallery: str | None = None) -> list[KeyRecord]:
        return self.store.list_keys(gallery)

    def revoke(self, key_id: str, gallery: str | None = None) -> KeyRecord | None:
        return self.store.revoke_key(key_id, _now(), gallery)

    def lookup(self, token: str) -> KeyRecord | None:
        """The key of ``token`` (possibly revoked), or None for an unknown token."""
        if not token or len(token) > 256:
            return None
        digest = hash_token(token)
        record = self.store.find_key(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            return None
        return record


def open_security_store(settings: Settings) -> SecurityStore:
    """The store holding keys and the audit log: the gallery's own database.

    A separate connection set from the gallery's, so key checks never queue behind gallery
    reads. SQLite in the data dir, or the PostgreSQL database of ``database_url``.
    """
    from service.gallery.store import open_store

    return open_store(settings.data_dir, settings.database_url)  # type: ignore[return-value]
