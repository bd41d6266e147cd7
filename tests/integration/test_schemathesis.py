"""Property-based fuzzing of the app's own OpenAPI schema (Schemathesis) on the real app.

Every operation, inference and admin alike, is called with generated inputs, valid
(positive) and invalid (negative), by a key that holds both scopes; every response must be
non-5xx, declared in the schema (status, content type) and match its declared body schema.
The number of cases is printed (and asserted to be at least a floor, so the fuzzing
cannot silently stop generating).

Schemathesis' own pytest plugin (``schemathesis.pytest.from_fixture``) does not run under
pytest 9 (it sets ``Function._nodeid``), so the cases are drawn with Hypothesis directly
from each operation's strategy.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.integration

CASES_PER_OPERATION = 30


def _not_a_server_error(ctx: Any, response: Any, case: Any) -> bool:
    assert response.status_code < 500 or (
        # Shedding under the test's own tight limits is declared and is not a crash.
        response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
    ), f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    return True


CHECKS = [_not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_schema(secure_stack: Any, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{secure_stack.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    if mode == GenerationMode.NEGATIVE:  # an operation without inputs has no invalid input
        operations = [op for op in operations if op.body or list(op.iter_parameters())]
    counts: Counter[str] = Counter()
    headers = secure_stack.headers("both")
    try:
        for operation in operations:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=CASES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def run(case: Any) -> None:
                counts[f"{case.method} {case.path}"] += 1
                case.call_and_validate(base_url=secure_stack.url, headers=headers, checks=CHECKS, timeout=60)

            run()
    finally:
        secure_stack.registry.set_threshold_override(None, actor="test")  # leave the app as found
        secure_stack.registry.end_canary(actor="test")
    total = sum(counts.values())
    print(f"\nschemathesis {mode.value}: {total} cases over {len(counts)} operations {dict(counts)}")
    assert len(counts) == len(operations) >= (12 if mode == GenerationMode.POSITIVE else 6)
    assert sum(counts.values()) >= 5 * len(operations)
