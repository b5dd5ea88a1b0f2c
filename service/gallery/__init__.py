"""Enrolled faces: the store (SQLite, PostgreSQL), the FAISS index over it, which index to
build, replicas following a primary, re-embedding, and the per-tenant impostor statistics
that identify's operating point is computed from."""
