"""Request bodies parsed straight from bytes by pydantic, and described in the OpenAPI schema.

FastAPI's body parameters decode JSON with the standard library and then validate Python
objects; pydantic's own JSON parser does both at once and several times faster. Routes that
parse bodies this way declare them through `openapi_extra`, and `install_body_schemas`
puts the models into the schema's components, so clients and fuzzers see the same contract.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from stepflash.core.errors import StepflashError, invalid

Model = TypeVar("Model", bound=BaseModel)
REF = "#/components/schemas/{model}"


def describe_validation_error(errors: list[Any]) -> StepflashError:
    """The most specific validation problem as a 400 naming the field at fault.

    For a value that may take several shapes (a string or a list of blocks), pydantic reports
    one error per shape; the deepest one is about the shape the caller meant. Union branch
    names such as `str` or `list[...]` are left out of the path.
    """
    first = max(errors, key=lambda error: len(error.get("loc", ())))
    location = [
        str(part) for part in first.get("loc", ()) if part != "body" and not _is_branch_name(part)
    ]
    if first.get("type") == "json_invalid":
        return invalid(f"the request body is not valid JSON: {first.get('msg')}")
    if not location:
        return invalid(f"the request body is invalid: {first.get('msg')}")
    param = ".".join(location)
    return invalid(f"invalid value for {param}: {first.get('msg')}", param)


def _is_branch_name(part: object) -> bool:
    return isinstance(part, str) and (part in _BRANCH_TYPES or "[" in part)


_BRANCH_TYPES = {"str", "int", "float", "bool", "dict", "list", "none"}


async def parse_body(request: Request, model: type[Model]) -> Model:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as error:
        raise describe_validation_error(list(error.errors())) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model`."""
    reference = {"$ref": REF.format(model=model.__name__)}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": reference}}}
    }


def install_body_schemas(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Add the body models (and the models they use) to the app's OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            definition = model.model_json_schema(ref_template=REF)
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
