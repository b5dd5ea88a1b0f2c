"""Python client of the faceserve face recognition service.

    import faceserve_client as fc
    c = fc.Client("http://127.0.0.1:8000", api_key=None)
    c.enroll("alice.jpg", subject_id="alice")
    r = c.identify("door.jpg")
    r.faces[0].match.subject_id   # "alice", or r.faces[0].match is None

Needs only httpx and pydantic. ``Client`` blocks, ``AsyncClient`` is its asyncio twin; results
are the service's own response models (``faceserve_client.models``); errors are exceptions
carrying the service's ``code`` (``faceserve_client.errors``).
"""

from __future__ import annotations

from faceserve_client import models
from faceserve_client._core import DEFAULT_URL, RetryPolicy
from faceserve_client.async_client import AsyncClient
from faceserve_client.client import Client
from faceserve_client.errors import *  # noqa: F403 - the exceptions are the package's API
from faceserve_client.errors import __all__ as _errors
from faceserve_client.models import *  # noqa: F403 - so are the response models
from faceserve_client.models import __all__ as _models
from faceserve_client.photos import Photo

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "Photo",
    "RetryPolicy",
    "models",
    *_errors,
    *_models,
]
