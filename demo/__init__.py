"""The bundled domains (the toy string skills, the "support" chat workload) and the demo
model builder.

A plug-in: only the composition root (``distillery``), ``bench/`` and ``tests/`` import
it. ``import demo`` is cheap: the builder (torch, transformers) loads on first use of one
of its names.
"""

import importlib as _importlib
import typing as _typing

from demo._domain import (
    ALL_SKILLS,
    STUDENT_SKILLS,
    DemoExample,
    Skill,
    format_prompt,
    parse_prompt,
    sample_examples,
    skill_by_name,
    solve,
)
from demo._support import (
    STRUCTURED_DRIFT,
    STRUCTURED_FAMILIES,
    SUPPORT_BOOTSTRAP,
    SUPPORT_DRIFT,
    SUPPORT_FAMILIES,
    SUPPORT_SYSTEM_PROMPT,
    TICKET_SCHEMA,
    TICKET_TOOLS,
    SupportFamily,
    SupportRequest,
    sample_support,
    support_route_label,
)

if _typing.TYPE_CHECKING:
    from demo._build import (
        STUDENT_SPEC,
        TEACHER_SPEC,
        BuildResult,
        build_demo_models,
        final_accuracy,
        is_built,
        regression_rows,
    )
    from demo._builder import ModelSpec, TrainReport, greedy_answers, train_model
    from demo._tokenizer import build_tokenizer

_LAZY = {
    "regression_rows": "demo._build",
    "STUDENT_SPEC": "demo._build",
    "TEACHER_SPEC": "demo._build",
    "BuildResult": "demo._build",
    "build_demo_models": "demo._build",
    "final_accuracy": "demo._build",
    "is_built": "demo._build",
    "ModelSpec": "demo._builder",
    "TrainReport": "demo._builder",
    "greedy_answers": "demo._builder",
    "train_model": "demo._builder",
    "build_tokenizer": "demo._tokenizer",
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'demo' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def skill_label(prompt: str) -> str | None:
    """Route label of a toy-domain prompt (its skill), or None."""
    parsed = parse_prompt(prompt)
    return parsed[0] if parsed else None


__all__ = [
    "ALL_SKILLS",
    "STUDENT_SKILLS",
    "STUDENT_SPEC",
    "STRUCTURED_DRIFT",
    "STRUCTURED_FAMILIES",
    "SUPPORT_BOOTSTRAP",
    "SUPPORT_DRIFT",
    "SUPPORT_FAMILIES",
    "SUPPORT_SYSTEM_PROMPT",
    "TICKET_SCHEMA",
    "TICKET_TOOLS",
    "TEACHER_SPEC",
    "BuildResult",
    "DemoExample",
    "ModelSpec",
    "Skill",
    "SupportFamily",
    "SupportRequest",
    "TrainReport",
    "build_demo_models",
    "build_tokenizer",
    "final_accuracy",
    "format_prompt",
    "greedy_answers",
    "is_built",
    "parse_prompt",
    "regression_rows",
    "sample_examples",
    "sample_support",
    "skill_by_name",
    "skill_label",
    "solve",
    "support_route_label",
    "train_model",
]
