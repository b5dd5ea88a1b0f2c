"""Versioned schema migrations of the stores that keep theirs outside their own module.

Each module holds ``MIGRATIONS``: entry ``i`` migrates from version ``i`` to ``i + 1``. Append
only: a released migration is never edited, because databases already ran it. The store records
its version in a ``schema_version`` table and refuses to open a schema newer than it knows.
(The SQLite store keeps its migrations in ``service/gallery/store/sqlite.py``.)
"""
