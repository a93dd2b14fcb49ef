"""Every settings field is documented once, in its attribute docstring, which pydantic reads as its `description`
(`use_attribute_docstrings`): the generated configuration reference (docs/hooks/config_reference.py) shows it."""
from __future__ import annotations

import typing
from typing import Annotated

from pydantic import BaseModel, Field

from sera_ops.settings import PlatformConfig, RepoSpec
from sera_ops.settings.base import StrictModel
from sera_ops.settings.training import KubernetesSettings, TrainingPlatformSettings, TrainSettings

ROOTS: tuple[type[BaseModel], ...] = (PlatformConfig, RepoSpec, TrainSettings, TrainingPlatformSettings,
                                      KubernetesSettings)
"""The models the configuration files are validated with (and the reference pages start from)."""


def nested_models(annotation: object) -> list[type[BaseModel]]:
    """The models inside a field's type: itself, or inside `list[...]`, `dict[..., ...]`, `... | None`, Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in nested_models(arg)]


def reachable_models(roots: typing.Iterable[type[BaseModel]]) -> list[type[BaseModel]]:
    """The roots and every model their fields reach, depth first, each once."""
    found: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in found:
            return
        found.append(model)
        for field in model.model_fields.values():
            for nested in nested_models(field.annotation):
                visit(nested)

    for root in roots:
        visit(root)
    return found


def undocumented_fields(roots: typing.Iterable[type[BaseModel]]) -> list[str]:
    """`Model.field` for every reachable field whose description is missing or blank."""
    return [f"{model.__name__}.{name}" for model in reachable_models(roots)
            for name, field in model.model_fields.items() if not (field.description or "").strip()]


def test_every_settings_field_has_a_description():
    missing = undocumented_fields(ROOTS)
    assert not missing, (
        f"{len(missing)} settings field(s) without a description; give each an attribute docstring (the string "
        "right under the field: what it does, its default where not obvious, SERA's value where ours differs): "
        + ", ".join(missing))


def test_the_walk_reaches_the_nested_models():
    """Nested sections are checked too: through `X | None`, `list[X]`, `dict[str, X]` and `dict[str, str | X]`."""
    names = {model.__name__ for model in reachable_models(ROOTS)}
    assert {"MirrorSettings", "CustomImage", "ModelServer", "SecretRef", "GitHubDemoIssues", "TrainSettings",
            "KubernetesSettings", "PostprocessOptions", "SweBenchImages"} <= names
    assert len(names) >= 20


class _Leaf(StrictModel):
    documented: int = 1
    """Documented."""
    bare: int = 2


class _Tree(StrictModel):
    listed: list[_Leaf] = []
    """Documented."""
    mapped: dict[str, _Leaf | str] = {}
    """Documented."""
    optional: Annotated[_Leaf | None, Field(None)]
    """Documented."""
    described: int = Field(3, description="Documented the other way.")
    blank: int = 4
    """   """


def test_a_field_without_a_docstring_is_reported_wherever_it_is_nested():
    assert _Leaf.model_fields["documented"].description == "Documented."
    assert undocumented_fields([_Tree]) == ["_Tree.blank", "_Leaf.bare"]
