"""PostgreSQL schema of the gallery, one entry per version (append only).

The same tables and semantics as the SQLite store. Differences that matter:

* ``subject_id`` uses the ``C`` collation, so subjects list in UTF-8 byte order as in SQLite
  whatever the database's locale.
* Row ids and change ids are identity columns (sequences): never reused, so a FAISS id can
  never come back as another face. A sequence is not transactional (a rolled-back write leaves
  a gap); followers read the log by id and do not mind gaps. Ids still increase in *commit*
  order because every write transaction takes one advisory lock first (see ``postgres.py``).
* ``changes.at`` is ``clock_timestamp()`` (the time of the insert, not of the transaction
  start, which may precede a wait for the write lock): replicas report their lag with it.
* Chips are JPEG already: stored out of line without a compression attempt.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE subjects (
            subject_id text COLLATE "C" PRIMARY KEY,
            metadata json NOT NULL DEFAULT '{}',
            created_at text NOT NULL
        )""",
        """CREATE TABLE faces (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            face_id text NOT NULL UNIQUE,
            subject_id text COLLATE "C" NOT NULL
                REFERENCES subjects (subject_id) ON DELETE CASCADE,
            bbox integer[] NOT NULL,
            landmarks double precision[] NOT NULL,
            detection_confidence double precision NOT NULL,
            model text NOT NULL,
            image_sha256 text NOT NULL,
            created_at text NOT NULL,
            embedding bytea NOT NULL,
            chip bytea,
            UNIQUE (subject_id, image_sha256)
        )""",
        "ALTER TABLE faces ALTER COLUMN chip SET STORAGE EXTERNAL",
        "CREATE INDEX faces_model ON faces (model)",
        """CREATE TABLE changes (
            change_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            op text NOT NULL CHECK (op IN ('add', 'delete')),
            face_row_id bigint NOT NULL,
            at timestamptz NOT NULL DEFAULT clock_timestamp()
        )""",
    ),
    # 2: API keys (hashes only) and the audit log (issue 7), as SQLite's version 2. Keys are
    # revoked, never deleted; ``seq`` gives their creation order (SQLite's rowid).
    (
        """CREATE TABLE api_keys (
            key_id text PRIMARY KEY,
            name text NOT NULL,
            key_hash text NOT NULL UNIQUE,
            scopes text NOT NULL,
            gallery text NOT NULL DEFAULT '',
            created_at text NOT NULL,
            revoked_at text,
            seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE
        )""",
        """CREATE TABLE audit (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at text NOT NULL,
            key_id text,
            key_name text NOT NULL,
            action text NOT NULL,
            gallery text NOT NULL DEFAULT '',
            subject_id text,
            face_id text,
            detail json NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX audit_gallery ON audit (gallery, id)",
    ),
    # 3: the pool of unknown faces (issue 17; service/gallery/store/unknown.py).
    (
        """CREATE TABLE unknown_faces (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            face_id text NOT NULL UNIQUE,
            gallery text NOT NULL DEFAULT '',
            photo text NOT NULL,
            source text,
            bbox text NOT NULL,
            landmarks text NOT NULL,
            detection_confidence double precision NOT NULL,
            model text NOT NULL,
            created_at text NOT NULL,
            cluster_id text,
            pinned integer NOT NULL DEFAULT 0,
            embedding bytea NOT NULL,
            chip bytea
        )""",
        "ALTER TABLE unknown_faces ALTER COLUMN chip SET STORAGE EXTERNAL",
        "CREATE INDEX unknown_faces_gallery ON unknown_faces (gallery, id)",
        "CREATE INDEX unknown_faces_created ON unknown_faces (created_at)",
    ),
    # 4: replicas' applied positions (heartbeats) and how far the change log was pruned
    # (issue 16): the log is pruned of what every live replica has applied.
    (
        """CREATE TABLE replicas (
            replica_id text PRIMARY KEY,
            applied_change_id bigint NOT NULL,
            seen_at timestamptz NOT NULL DEFAULT clock_timestamp()
        )""",
        "CREATE TABLE change_log (pruned_through bigint NOT NULL)",
        "INSERT INTO change_log (pruned_through) VALUES (0)",
    ),
    # 5: a subject goes with its last face (issue 20); remove those older versions left
    # behind without faces, as SQLite's version 4.
    (
        "DELETE FROM subjects WHERE NOT EXISTS "
        "(SELECT 1 FROM faces f WHERE f.subject_id = subjects.subject_id)",
    ),
    # 6: tombstones of erasures and key revocations, re-applied by a restore (as SQLite's
    # version 5; service/gallery/backup.py). Each subject gets a random erasure token (the
    # volatile default is evaluated per row, existing rows included).
    (
        "ALTER TABLE subjects ADD COLUMN erasure_token text NOT NULL "
        "DEFAULT replace(gen_random_uuid()::text, '-', '')",
        "CREATE UNIQUE INDEX subjects_erasure_token ON subjects (erasure_token)",
        """CREATE TABLE tombstones (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('subject', 'face', 'unknown_face', 'key')),
            ref text NOT NULL,
            at text NOT NULL,
            UNIQUE (kind, ref)
        )""",
    ),
    # 7: scopes split by role and galleries created over HTTP (issue 20), as SQLite's 6.
    (
        "UPDATE api_keys SET scopes = replace(scopes, 'admin', 'read,erase,metrics,audit,admin') "
        "WHERE ',' || scopes || ',' LIKE '%,admin,%' "
        "AND ',' || scopes || ',' NOT LIKE '%,read,%'",
        """CREATE TABLE IF NOT EXISTS galleries (
            name text PRIMARY KEY,
            created_at text NOT NULL
        )""",
        "INSERT INTO galleries (name, created_at) SELECT gallery, min(created_at) "
        "FROM api_keys WHERE gallery <> '' GROUP BY gallery ON CONFLICT (name) DO NOTHING",
    ),
    # 8: negative examples of subjects, "not this person" (issue 17; SQLite's version 7).
    (
        """CREATE TABLE negatives (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            negative_id text NOT NULL UNIQUE,
            subject_id text COLLATE "C" NOT NULL REFERENCES subjects (subject_id)
                ON DELETE CASCADE ON UPDATE CASCADE,
            source text NOT NULL,
            source_id text,
            model text NOT NULL,
            created_at text NOT NULL,
            embedding bytea NOT NULL,
            chip bytea
        )""",
        "ALTER TABLE negatives ALTER COLUMN chip SET STORAGE EXTERNAL",
        "CREATE INDEX negatives_subject ON negatives (subject_id, id)",
    ),
    # 9: tombstones of deleted negatives (kind 'negative'; SQLite's version 8). The CHECK of
    # version 6 has PostgreSQL's default name; the rows stay as they are.
    (
        "ALTER TABLE tombstones DROP CONSTRAINT IF EXISTS tombstones_kind_check",
        "ALTER TABLE tombstones ADD CONSTRAINT tombstones_kind_check "
        "CHECK (kind IN ('subject', 'face', 'unknown_face', 'key', 'negative'))",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
