"""The bundled synthetic domain and the builder of its tiny teacher and student models."""

from demo._build import (
    STUDENT_SKILLS,
    STUDENT_SPEC,
    TEACHER_SPEC,
    BuildResult,
    build_demo_models,
    final_accuracy,
    is_built,
)
from demo._builder import ModelSpec, TrainReport, greedy_answers, train_model
from demo._domain import (
    ALL_SKILLS,
    DemoExample,
    Skill,
    format_prompt,
    parse_prompt,
    sample_examples,
    skill_by_name,
    solve,
)
from demo._tokenizer import build_tokenizer

__all__ = [
    "ALL_SKILLS",
    "STUDENT_SKILLS",
    "STUDENT_SPEC",
    "TEACHER_SPEC",
    "BuildResult",
    "DemoExample",
    "ModelSpec",
    "Skill",
    "TrainReport",
    "build_demo_models",
    "build_tokenizer",
    "final_accuracy",
    "format_prompt",
    "greedy_answers",
    "is_built",
    "parse_prompt",
    "sample_examples",
    "skill_by_name",
    "solve",
    "train_model",
]
