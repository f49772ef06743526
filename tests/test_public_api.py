"""The library's public API reads with help(): every public class of the library packages has a
docstring of its own, every dataclass and named tuple lists each of its fields, in order, under
``Attributes:``, and the ``Literal`` types of string options agree with what the code accepts."""

import dataclasses
import importlib
import inspect
import pkgutil
import re
import typing

import pytest

PACKAGES = ("msae.saes", "msae.kernels", "msae.training", "msae.data", "msae.evals", "msae.experiments", "msae.plots")
MODULES = ("msae.io", "msae.files")


def library_modules() -> list[str]:
    names = list(MODULES)
    for package in PACKAGES:
        names.append(package)
        path = importlib.import_module(package).__path__
        names += [info.name for info in pkgutil.walk_packages(path, package + ".")]
    return sorted(names)


def public_classes() -> list[type]:
    """The classes defined (not imported) in the library modules whose names don't start with _."""
    classes = []
    for name in library_modules():
        for attr, value in vars(importlib.import_module(name)).items():
            if inspect.isclass(value) and value.__module__ == name and not attr.startswith("_"):
                classes.append(value)
    return classes


def own_docstring(cls: type) -> str:
    """The class's own docstring (not inherited), or "" where there is none. A dataclass or
    named tuple without one gets its signature, "Name(field, ...)", which does not count."""
    doc = cls.__dict__.get("__doc__") or ""
    if doc.startswith(cls.__name__ + "("):
        return ""
    return inspect.cleandoc(doc)


def record_fields(cls: type) -> list[str] | None:
    """The fields of a dataclass or named tuple, in order; None for other classes."""
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return list(cls._fields)
    return None


def documented_attributes(doc: str) -> list[str]:
    """The names listed under ``Attributes:`` (Google style: ``    name: meaning``, continued on
    deeper-indented lines; the section ends at the next unindented line)."""
    lines = doc.splitlines()
    if "Attributes:" not in lines:
        return []
    names = []
    for line in lines[lines.index("Attributes:") + 1 :]:
        if line.strip() and not line.startswith(" "):
            break
        match = re.match(r"    (\w+): \S", line)
        if match:
            names.append(match.group(1))
    return names


CLASSES = public_classes()
RECORDS = [cls for cls in CLASSES if record_fields(cls) is not None]


def test_the_walk_finds_the_library_classes():
    names = {cls.__name__ for cls in CLASSES}
    assert {"MatryoshkaConfig", "MatryoshkaBatchTopKSAE", "TrainConfig", "CorpusConfig", "JudgeConfig",
            "ActiveLatents", "DataSource"} <= names
    assert {"TrainConfig", "TrainResult", "StepOutput"} <= {cls.__name__ for cls in RECORDS}
    assert not any(cls.__name__.startswith("_") for cls in CLASSES)


def test_every_public_class_has_a_docstring():
    missing = [f"{cls.__module__}.{cls.__qualname__}" for cls in CLASSES if not own_docstring(cls).strip()]
    assert not missing, f"public classes without a docstring: {missing}"


def test_every_field_is_documented_under_attributes():
    problems = []
    for cls in RECORDS:
        fields, listed = record_fields(cls), documented_attributes(own_docstring(cls))
        where = f"{cls.__module__}.{cls.__qualname__}"
        undocumented = [f for f in fields if f not in listed]
        unknown = [name for name in listed if name not in fields]
        if undocumented:
            problems.append(f"{where}: fields missing from its Attributes section: {undocumented}")
        if unknown:
            problems.append(f"{where}: Attributes lists names that are not fields: {unknown}")
        if not undocumented and not unknown and listed != fields:
            problems.append(f"{where}: Attributes lists the fields in another order than {fields}")
    assert not problems, "\n".join(problems)


def test_the_attributes_parser():
    doc = inspect.cleandoc('''One line.

        Attributes:
            alpha: a meaning.
            beta: a meaning that runs
                onto a second line, with gamma: inside it.

        More prose, not a field: see alpha.
        ''')
    assert documented_attributes(doc) == ["alpha", "beta"]
    assert documented_attributes("No section.\n    alpha: a meaning.") == []


@pytest.mark.parametrize("cls", RECORDS, ids=lambda cls: cls.__name__)
def test_annotations_resolve(cls):
    """The annotations are strings (``from __future__ import annotations``); each must name
    something its module imports, ``Literal`` included."""
    typing.get_type_hints(cls)


# --- Literal choices ------------------------------------------------------------------------


def literal_choices(hint) -> tuple:
    """The values of the ``Literal`` in a type hint (searched through unions), in order."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    return tuple(value for arg in typing.get_args(hint) for value in literal_choices(arg))


def field_choices(cls: type, name: str) -> tuple:
    return literal_choices(typing.get_type_hints(cls)[name])


def test_literal_fields_take_exactly_the_values_validation_accepts():
    from msae.data.activations import CorpusConfig
    from msae.saes.matryoshka import MatryoshkaConfig
    from msae.training.loop import TrainConfig

    cases = [
        (CorpusConfig, "source", ("stories", "english", "text_dir", "hf"), lambda v: CorpusConfig(source=v, path="somewhere")),
        (TrainConfig, "autocast_dtype", ("bfloat16", "float16"), lambda v: TrainConfig(steps=1, autocast_dtype=v)),
        (MatryoshkaConfig, "group_weighting", ("uniform", "size"),
         lambda v: MatryoshkaConfig(d_in=4, d_sae=8, k=2, group_sizes=[4, 4], group_weighting=v)),
    ]
    for cls, name, expected, build in cases:
        assert field_choices(cls, name) == expected, f"{cls.__name__}.{name}"
        for value in expected:
            build(value)
        with pytest.raises(ValueError):
            build("not-a-choice")


def test_literal_names_agree_with_the_registries():
    from msae.data.models import KNOWN_MODELS, ModelName
    from msae.io import _MSAE_CLASSES, FOREIGN_SAELENS_ARCHITECTURES
    from msae.saes.base import SAELensArchitecture
    from msae.saes.registry import ARCHITECTURES, ArchitectureName, architecture

    assert typing.get_args(ArchitectureName) == tuple(ARCHITECTURES)
    for name in typing.get_args(ArchitectureName):
        assert architecture(name).name == name
    assert typing.get_args(ModelName) == KNOWN_MODELS
    assert typing.get_args(SAELensArchitecture) == FOREIGN_SAELENS_ARCHITECTURES
    for sae_class, _ in _MSAE_CLASSES.values():
        assert sae_class.architecture in typing.get_args(SAELensArchitecture), sae_class.__name__
