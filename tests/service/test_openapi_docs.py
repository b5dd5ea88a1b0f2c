"""The OpenAPI document is the whole contract, and documents all of it (issue 20).

Walks ``app.openapi()``: every property of every schema (components and inline) and every
parameter has a description; every operation has an example of its success response, and of
its request body when it has one (verify's two modes as named alternatives); and every
example parses with the model it illustrates, so an example cannot drift from the contract.
New endpoints and fields fail here until they are documented.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, TypeAdapter

import service.api.schemas as schemas
from service.api.app import create_app
from service.api.examples import EXAMPLES
from service.api.routes import ROUTERS

APP = create_app()
SCHEMA = APP.openapi()


def _operations(schema: dict[str, Any] = SCHEMA) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def _properties(where: str, schema: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``properties`` entry inside ``schema``, nested ones included."""
    if isinstance(schema, dict):
        for name, prop in (schema.get("properties") or {}).items():
            yield f"{where}.{name}", prop
            yield from _properties(f"{where}.{name}", prop)
        for key in ("items", "additionalProperties"):
            yield from _properties(where, schema.get(key))
        for key in ("anyOf", "allOf", "oneOf"):
            for member in schema.get(key, ()):
                yield from _properties(where, member)
    elif isinstance(schema, list):
        for member in schema:
            yield from _properties(where, member)


def undescribed_properties(schema: dict[str, Any]) -> list[str]:
    missing = [
        where
        for name, component in schema.get("components", {}).get("schemas", {}).items()
        for where, prop in _properties(name, component)
        if not (prop.get("description") or "").strip()
    ]
    for path, method, operation in _operations(schema):
        for media in operation.get("requestBody", {}).get("content", {}).values():
            missing += [w for w, p in _properties(f"{method} {path}", media.get("schema"))
                        if not p.get("description")]
    return missing


def test_every_property_has_a_description() -> None:
    missing = undescribed_properties(SCHEMA)
    assert not missing, f"properties without a description: {missing}"


class Inner(BaseModel):
    documented: int = Field(description="Yes.")
    bare: int


class Outer(BaseModel):
    inner: Inner = Field(description="Nested.")


def test_the_checks_find_what_is_missing() -> None:
    """The walkers above do see an undocumented field and an operation without examples."""
    bad = FastAPI()

    @bad.post("/thing", summary="A thing", description="Makes one.")
    async def thing(body: Outer) -> Outer:
        return body

    schema = bad.openapi()
    # FastAPI's own 422 schemas are undocumented too (the app replaces them).
    assert [m for m in undescribed_properties(schema) if "ValidationError" not in m] == [
        "Inner.bare"]
    assert missing_examples(schema) == ["post /thing request application/json",
                                        "post /thing response application/json"]


def test_every_parameter_and_operation_is_described() -> None:
    missing = []
    for path, method, operation in _operations():
        if not (operation.get("summary") and operation.get("description")):
            missing.append(f"{method} {path}")
        for parameter in operation.get("parameters", ()):
            if not parameter.get("description"):
                missing.append(f"{method} {path} {parameter['in']}:{parameter['name']}")
    assert not missing, f"without a description: {missing}"


def _has_example(media: dict[str, Any], schema: dict[str, Any] = SCHEMA) -> bool:
    """An example on the media type, or on the model it refers to (``json_schema_extra``)."""
    if "example" in media or media.get("examples"):
        return True
    ref = (media.get("schema") or {}).get("$ref", "")
    component = schema.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1])
    return bool(component and (component.get("examples") or "example" in component))


def missing_examples(schema: dict[str, Any]) -> list[str]:
    missing = []
    for path, method, operation in _operations(schema):
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            if not _has_example(media, schema):
                missing.append(f"{method} {path} request {media_type}")
        success = [r for s, r in operation["responses"].items() if s.startswith("2")]
        assert success, f"{method} {path} documents no success response"
        for response in success:
            content = response.get("content") or {}
            if not content:
                missing.append(f"{method} {path} response (no content)")
            for media_type, media in content.items():
                if not _has_example(media, schema):
                    missing.append(f"{method} {path} response {media_type}")
    return missing


def test_every_operation_has_request_and_response_examples() -> None:
    missing = missing_examples(SCHEMA)
    assert not missing, f"without an example: {missing}"
    ids = {op["operationId"] for _, _, op in _operations()}
    assert set(EXAMPLES) <= ids, f"examples of no operation: {set(EXAMPLES) - ids}"


def test_verify_shows_its_two_modes_as_alternatives() -> None:
    body = SCHEMA["paths"]["/v1/verify"]["post"]["requestBody"]["content"]
    for media_type in ("multipart/form-data", "application/json"):
        examples = body[media_type]["examples"]
        assert set(examples) == {"pair", "subject"}
        assert set(examples["pair"]["value"]) >= {"image_a", "image_b"}
        assert set(examples["subject"]["value"]) >= {"image", "subject_id"}
        assert all(e.get("summary") for e in examples.values())


def _values(media: dict[str, Any]) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    if media.get("examples"):
        return [e["value"] for e in media["examples"].values()]
    ref = (media.get("schema") or {}).get("$ref", "")
    component = SCHEMA["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    return list(component.get("examples", ()))


def _routes() -> Iterator[APIRoute]:
    for router in ROUTERS:
        for route in router.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                yield route


@pytest.mark.parametrize("route", list(_routes()), ids=lambda r: r.name)
def test_examples_parse_with_the_operations_models(route: APIRoute) -> None:
    [operation] = [op for _, _, op in _operations() if op["operationId"] == route.name]
    if route.response_model is not None:
        adapter = TypeAdapter(route.response_model)
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                for value in _values(response["content"]["application/json"]):
                    adapter.validate_python(value)
    for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
        if media_type != "application/json":
            continue  # multipart examples show file parts as placeholders
        refs = [media["schema"], *media["schema"].get("anyOf", [])]
        [name] = [r["$ref"].rsplit("/", 1)[-1] for r in refs if "$ref" in r]
        model = getattr(schemas, name)
        assert issubclass(model, BaseModel)
        for value in _values(media):
            model.model_validate(value)
