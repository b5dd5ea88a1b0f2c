"""Unknown query parameters are refused, as unknown body fields are.

A misspelt parameter (``?limt=10``, ``?treshold=0.9``) used to be ignored silently, so the
request ran with the default, while a misspelt form or JSON field is 422. Both now answer 422
``invalid_field`` with one ``details`` entry per unknown name (``field`` is ``query.<name>``,
``type`` is ``extra_forbidden``, as pydantic reports an extra body field), before the route
authenticates or reads its body.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError

__all__ = ["reject_unknown_query"]


def _query_names(dependant: Dependant) -> frozenset[str]:
    names: set[str] = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        names.update(field.alias for field in current.query_params)
        stack.extend(current.dependencies)
    return frozenset(names)


def _allowed(route: Any) -> frozenset[str]:
    """The route's query parameter names, computed once per route (routes are not hashable:
    kept on the route itself)."""
    names = getattr(route, "_faceserve_query_names", None)
    if names is None:
        names = _query_names(route.dependant)
        route._faceserve_query_names = names
    return names


async def reject_unknown_query(request: Request) -> None:
    """A router dependency: 422 when the query string names a parameter the route lacks."""
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    allowed = _allowed(route)
    unknown = sorted({name for name in request.query_params if name not in allowed})
    if unknown:
        raise RequestValidationError([
            {"type": "extra_forbidden", "loc": ("query", name),
             "msg": "Unknown query parameter" + (
                 f"; this operation takes {', '.join(sorted(allowed))}" if allowed
                 else "; this operation takes none")}
            for name in unknown[:20]
        ])
