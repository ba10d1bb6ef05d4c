"""No module in service/ holds mutable state: what the app needs (the drain state, thread pools, the model) it
builds in `create_app` and its lifespan. A module's globals are its imports, classes, functions, loggers and
constants of immutable types; the few constants of a mutable type (the OpenAPI declarations FastAPI reads, and
its routers, filled in by the decorators at import) are listed here by name."""

import enum
import importlib
import inspect
import logging
import pkgutil
import re
import struct
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import PurePath

from fastapi import APIRouter

import service

DECLARATIONS = {
    "service.api.PREDICT_BODY",
    "service.api.PAGE_HEADERS",
    "service.api._OTHER_ERRORS",
    "service.api._EXPOSITION",
    "service.open_inference.INFER_BODY",
    "service.open_inference._METADATA",
    "service.open_inference._SERVER_METADATA",
    "service.open_inference._NOT_READY",
    "service.open_inference._MODEL_ERRORS",
    "service.open_inference._INFER_ERRORS",
    "service.open_inference._OTHER_ERRORS",
    "service.open_inference._REPOSITORY_ERRORS",
    "service.schemas.SERVED_EXAMPLE",
}
"""Dicts handed to FastAPI to describe routes in the OpenAPI schema: read when the schema is built, never changed."""

IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset, enum.Enum, re.Pattern, struct.Struct,
             PurePath, types.MappingProxyType, logging.Logger, typing.TypeVar)  # fmt: skip


def immutable(value: object) -> bool:
    if isinstance(value, IMMUTABLE) or type(value) is object:  # a bare object(): a sentinel
        return True
    if isinstance(value, tuple):
        return all(immutable(item) for item in value)
    if is_dataclass(value) and not isinstance(value, type):
        frozen = value.__dataclass_params__.frozen  # type: ignore[attr-defined]
        return bool(frozen) and all(immutable(getattr(value, field.name)) for field in fields(value))
    return False


def module_globals() -> list[tuple[str, object]]:
    found = []
    for info in pkgutil.iter_modules(service.__path__):
        module = importlib.import_module(f"service.{info.name}")
        for name, value in vars(module).items():
            if name.startswith("__") or inspect.ismodule(value) or inspect.isclass(value) or callable(value):
                continue
            if typing.get_origin(value) is not None:  # an alias: `StateDep = Annotated[...]`
                continue
            found.append((f"{module.__name__}.{name}", value))
    return found


def test_service_modules_hold_no_mutable_state() -> None:
    mutable = [
        f"{name}: {type(value).__name__}"
        for name, value in module_globals()
        if not immutable(value) and name not in DECLARATIONS and not isinstance(value, APIRouter)
    ]
    assert mutable == []


def test_the_declarations_listed_still_exist() -> None:
    assert DECLARATIONS - {name for name, _ in module_globals()} == set()
