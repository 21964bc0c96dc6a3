"""What every spec model shares: camelCase manifest names, forbidden unknown fields, a description on each field.

Field names are camelCase in manifests (Kubernetes convention) and snake_case in Python.
Every field carries a description: the CRD generator copies them so `kubectl explain` is useful.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True,
        validate_default=True,
    )


def _f(default: Any = ..., description: str = "", **kw: Any) -> Any:
    if "default_factory" in kw:
        return Field(description=description, **kw)
    return Field(default, description=description, **kw)


PositiveSeconds = Annotated[float, Field(gt=0)]
