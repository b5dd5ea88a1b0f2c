"""Example requests and responses of every operation, for the OpenAPI document.

Kept here, one entry per operation id, rather than in each route decorator: the examples are
documentation, several operations share their parts (a face, an operating point), and
``tests/service/test_openapi_docs.py`` checks both that every operation has them and that
each response example parses with the operation's response model (an example cannot drift
from the contract). ``add_examples`` puts them into the generated document: request examples
into each ``requestBody`` media type (``examples`` by name where an operation has modes, as
verify's two), response examples into the success response.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

from service.api.cursors import encode_cursor

__all__ = ["EXAMPLES", "add_examples"]

# ---------------------------------------------------------------- shared parts

_IMAGE_B64 = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8U..."
_IMAGE_FILE = "(binary JPEG, PNG, WebP or BMP file)"
_BBOX = {"left": 71, "top": 52, "right": 146, "bottom": 127}
_LANDMARKS = [[133.4, 77.9], [117.6, 78.5], [83.1, 79.2], [98.9, 79.6], [108.5, 103.4]]
_QUALITY = {
    "verdict": "high", "eye_distance": 27.4, "sharpness": 0.44, "yaw": -2.1, "roll": 1.3,
    "detection_confidence": 1.05, "brightness": 0.47, "contrast": 0.19, "dark_share": 0.0,
    "bright_share": 0.001,
}
_SELECTION = {
    "rule": "visible-area>confidence>centre", "decided_by": "only_face",
    "reason": "the only face found", "faces_detected": 1,
}
_VERIFY_POINT = {"threshold": 0.915, "source": "setting"}
_IDENTIFY_POINT = {
    "threshold": 0.9312, "source": "fpir", "far": 2.1e-06, "fpir": 0.01,
    "gallery_faces": 4800, "impostor_subjects": 1200, "reference": "lfw-strangers",
}
_CANDIDATE = {"subject_id": "person-0042", "face_id": "f3a9c2d4e5b6", "similarity": 0.962}
_MODEL = "dlib-resnet-v1"
_raw = [math.sin(1.7 * i + 0.3) for i in range(128)]
_EMBEDDING = [round(v / math.sqrt(sum(x * x for x in _raw)), 5) for v in _raw]
_EMBEDDING_B64 = base64.urlsafe_b64encode(
    struct.pack("<128f", *_EMBEDDING)).decode("ascii").rstrip("=")
_CREATED = "2026-05-04T09:12:44.512Z"
_FACE_INFO = {
    "face_id": "f3a9c2d4e5b6", "subject_id": "person-0042", "bbox": _BBOX,
    "landmarks": _LANDMARKS, "detection_confidence": 1.05, "model": _MODEL,
    "image_sha256": "9b74c9897bac770ffc029102a200c5de0a1c8e5f3b0ec9dd9a9e4c1b5fa2d3e1",
    "created_at": _CREATED,
}
_SUBJECT = {
    "subject_id": "person-0042", "metadata": {"name": "Ada Lovelace", "team": "desk"},
    "created_at": _CREATED, "face_count": 2,
}
_KEY = {
    "key_id": "k_8f2c41d0e7a3", "name": "front-door kiosk", "scopes": ["recognize"],
    "gallery": None, "created_at": _CREATED, "revoked_at": None,
}
_CLUSTERS = {
    "clusters": [{
        "cluster_id": "c1d2e3f4", "size": 2, "representative_face_id": "u7a8b9c0",
        "faces": [
            {"face_id": "u7a8b9c0", "source": "door-cam/2026-05-04/0912.jpg", "bbox": _BBOX,
             "created_at": _CREATED},
            {"face_id": "u1b2c3d4", "source": "door-cam/2026-05-04/1730.jpg", "bbox": _BBOX,
             "created_at": _CREATED},
        ],
    }],
    "unclustered": 3, "pending": 0, "threshold": 0.93,
}


# ---------------------------------------------------------------- per operation

# operation id -> {"request": {media type: example or {"<name>": {"summary", "value"}}},
#                  "response": example of the success answer}
EXAMPLES: dict[str, dict[str, Any]] = {
    "enroll": {
        "request": {
            "multipart/form-data": {
                "one": {"summary": "One photo", "value": {
                    "image": _IMAGE_FILE, "subject_id": "person-0042",
                    "metadata": '{"name": "Ada Lovelace"}'}},
                "several": {"summary": "Several photos (repeat the part)", "value": {
                    "images": [_IMAGE_FILE, _IMAGE_FILE], "subject_id": "person-0042"}},
            },
            "application/json": {
                "one": {"summary": "One photo", "value": {
                    "image": _IMAGE_B64, "subject_id": "person-0042",
                    "metadata": {"name": "Ada Lovelace"}, "on_duplicate": "warn"}},
                "several": {"summary": "Several photos", "value": {
                    "images": [_IMAGE_B64, _IMAGE_B64], "subject_id": "person-0042"}},
            },
        },
        "response": {
            "face_id": "f3a9c2d4e5b6", "subject_id": "person-0042", "created": True,
            "bbox": _BBOX, "landmarks": _LANDMARKS, "detection_confidence": 1.05,
            "faces_detected": 1, "face_selection": _SELECTION, "model": _MODEL,
            "quality": _QUALITY,
        },
    },
    "verify": {
        "request": {
            "multipart/form-data": {
                "pair": {"summary": "Two photos: the same person?", "value": {
                    "image_a": _IMAGE_FILE, "image_b": _IMAGE_FILE}},
                "subject": {"summary": "A photo against an enrolled subject", "value": {
                    "image": _IMAGE_FILE, "subject_id": "person-0042"}},
            },
            "application/json": {
                "pair": {"summary": "Two photos: the same person?", "value": {
                    "image_a": _IMAGE_B64, "image_b": _IMAGE_B64}},
                "subject": {"summary": "A photo against an enrolled subject", "value": {
                    "image": _IMAGE_B64, "subject_id": "person-0042", "threshold": 0.93}},
            },
        },
        "response": {
            "matched": True, "match": True, "similarity": 0.957, "distance": 0.086,
            "threshold": 0.915, "operating_point": _VERIFY_POINT,
            "faces": [
                {"source": "image", "bbox": _BBOX, "landmarks": _LANDMARKS,
                 "detection_confidence": 1.05, "faces_detected": 1,
                 "face_selection": _SELECTION, "quality": _QUALITY},
                {"source": "template", "bbox": _BBOX, "landmarks": _LANDMARKS,
                 "detection_confidence": 1.08, "face_id": "f3a9c2d4e5b6",
                 "subject_id": "person-0042"},
            ],
            "templates_compared": 2, "model": _MODEL,
        },
    },
    "identify_stored": {
        "response": {
            "candidates": [_CANDIDATE, {"subject_id": "person-0107", "face_id": "a0b1c2d3e4f5",
                                        "similarity": 0.871}],
            "match": _CANDIDATE, "matched": True, "threshold": 0.9312,
            "operating_point": _IDENTIFY_POINT, "model": _MODEL,
        },
    },
    "identify_search": {
        "request": {"application/json": {
            "face": {"summary": "A stored face", "value": {"face_id": "f3a9c2d4e5b6", "k": 3}},
            "embedding": {"summary": "An embedding from POST /v1/embed", "value": {
                "embedding": _EMBEDDING_B64, "identify_fpir": 0.001}},
        }},
        "response": {
            "candidates": [_CANDIDATE], "match": _CANDIDATE, "matched": True,
            "threshold": 0.9312, "operating_point": _IDENTIFY_POINT, "model": _MODEL,
        },
    },
    "identify_image": {
        "request": {
            "multipart/form-data": {"image": _IMAGE_FILE, "k": 3, "max_faces": 10},
            "application/json": {"image": _IMAGE_B64, "k": 3, "identify_fpir": 0.01},
        },
        "response": {
            "faces": [
                {"bbox": _BBOX, "landmarks": _LANDMARKS, "detection_confidence": 1.05,
                 "candidates": [_CANDIDATE], "match": _CANDIDATE, "matched": True,
                 "quality": _QUALITY},
                {"bbox": {"left": 301, "top": 60, "right": 368, "bottom": 127},
                 "landmarks": _LANDMARKS, "detection_confidence": 0.98,
                 "candidates": [{"subject_id": "person-0107", "face_id": "a0b1c2d3e4f5",
                                 "similarity": 0.842}],
                 "match": None, "matched": False, "quality": _QUALITY},
            ],
            "faces_detected": 2, "threshold": 0.9312, "operating_point": _IDENTIFY_POINT,
            "model": _MODEL,
        },
    },
    "embed": {
        "request": {
            "multipart/form-data": {"image": _IMAGE_FILE, "max_faces": 5},
            "application/json": {"image": _IMAGE_B64, "max_faces": 5},
        },
        "response": {
            "faces": [{
                "bbox": _BBOX, "landmarks": _LANDMARKS, "detection_confidence": 1.05,
                "embedding": _EMBEDDING, "embedding_b64": _EMBEDDING_B64, "quality": _QUALITY,
            }],
            "faces_detected": 1, "model": _MODEL,
        },
    },
    "list_subjects": {
        "response": {"subjects": [_SUBJECT],
                     "next_cursor": encode_cursor("subjects", "", "person-0042")},
    },
    "get_subject": {"response": {**_SUBJECT, "face_count": 1, "faces": [_FACE_INFO]}},
    "delete_subject": {"response": {"subject_id": "person-0042", "faces_deleted": 2}},
    "get_face": {"response": _FACE_INFO},
    "delete_face": {"response": {"face_id": "f3a9c2d4e5b6", "subject_id": "person-0042",
                                 "deleted": True}},
    "list_clusters": {"response": _CLUSTERS},
    "run_clustering": {"request": {"application/json": {"mode": "incremental"}},
                       "response": _CLUSTERS},
    "name_cluster": {
        "request": {"application/json": {"subject_id": "visitor-0007"}},
        "response": {"cluster_id": "c1d2e3f4", "subject_id": "visitor-0007",
                     "face_ids": ["f0e1d2c3b4a5", "f6a7b8c9d0e1"]},
    },
    "delete_cluster": {"response": {"cluster_id": "c1d2e3f4", "faces_deleted": 2}},
    "merge_clusters": {"request": {"application/json": {"into": "c5d6e7f8"}},
                       "response": _CLUSTERS},
    "split_cluster": {"request": {"application/json": {"face_ids": ["u1b2c3d4"]}},
                      "response": _CLUSTERS},
    "audit_log": {
        "response": {
            "events": [{
                "id": 41, "at": _CREATED, "key_id": "k_8f2c41d0e7a3", "key_name": "reception",
                "action": "enroll", "subject_id": "person-0042", "face_id": "f3a9c2d4e5b6",
                "detail": {"created": True},
            }],
            "next_cursor": encode_cursor("audit", "", 41),
            "next_after": 41,
        },
    },
    "list_keys": {"response": {"keys": [_KEY]}},
    "create_key": {
        "request": {"application/json": {"name": "front-door kiosk", "scopes": ["recognize"]}},
        "response": {**_KEY, "token": "fsk_4kT9wq2ZbC7xYv1N3pLr8sHd6uJm0aEfQ2wX9yB5nT1"},
    },
    "revoke_key": {"response": {**_KEY, "revoked_at": "2026-06-01T08:00:00.000Z"}},
    "healthz": {"response": {"status": "ok"}},
    "readyz": {
        "response": {
            "status": "ready", "model": _MODEL, "device": "cuda:0", "index_kind": "flat",
            "index_source": "snapshot", "gallery_faces": 4800, "gallery_subjects": 1200,
            "batching": True, "operating_point": _VERIFY_POINT,
            "identify_operating_point": _IDENTIFY_POINT,
        },
    },
    "metrics": {
        "response": (
            "# HELP faceserve_http_requests_total HTTP requests by route template, method "
            "and status.\n# TYPE faceserve_http_requests_total counter\n"
            'faceserve_http_requests_total{method="POST",route="/v1/identify",status="200"} '
            "1542.0\n"
        ),
    },
    "get_face_chip": {"response": "(binary JPEG: the 150x150 aligned chip)"},
    "pool_chip": {"response": "(binary JPEG: the 150x150 aligned chip)"},
}


def _named(example: Any) -> bool:
    """Whether ``example`` is a set of named examples (``{"name": {"value": ...}}``)."""
    return isinstance(example, dict) and bool(example) and all(
        isinstance(v, dict) and "value" in v for v in example.values()
    )


def _put(media: dict[str, Any], example: Any) -> None:
    if _named(example):
        media["examples"] = example
    else:
        media["example"] = example


def add_examples(schema: dict[str, Any]) -> None:
    """Put ``EXAMPLES`` into the operations of an OpenAPI ``schema`` (in place)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            entry = EXAMPLES.get(operation.get("operationId", ""))
            if entry is None:
                continue
            content = operation.get("requestBody", {}).get("content", {})
            for media_type, example in entry.get("request", {}).items():
                if media_type in content:
                    _put(content[media_type], example)
            if "response" in entry:
                for status, response in operation.get("responses", {}).items():
                    if status.startswith("2"):
                        for media in response.get("content", {}).values():
                            _put(media, entry["response"])
