"""The HTTP layer: the app factory, routers, request/response schemas, errors, dependencies,
metrics, the access log and identifier rules. ``errors`` and ``schemas`` are the service's
shared vocabulary: the other sub-packages raise these errors and return these models."""
