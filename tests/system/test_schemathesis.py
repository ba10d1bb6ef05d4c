"""schemathesis against the service's own OpenAPI schema, on the real server: no 5xx, and every response matches
what the schema documents. Driven through Hypothesis directly (schemathesis' pytest plugin does not load with
pytest 9)."""

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.helpers import running_server

# /predict is where the input space is; the GET endpoints take no input and yield a handful of cases each.
PREDICT_CASES = 500
OTHER_CASES = 20
INFER_CASES = 150


def test_schemathesis_finds_no_5xx_and_no_undocumented_response(bundled_model: Path, tmp_path: Path) -> None:
    counts: dict[str, int] = {}
    with running_server(bundled_model, tmp_path / "server.log") as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            label = operation.label
            budget = PREDICT_CASES if "/predict" in label else INFER_CASES if label.endswith("/infer") else OTHER_CASES

            @given(case=operation.as_strategy())
            @settings(max_examples=budget, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: schemathesis.Case) -> None:
                counts[label] = counts.get(label, 0) + 1  # noqa: B023 - run at once, inside this iteration
                # The schema cannot say which bytes make a decodable image, so a schema-valid upload of random
                # bytes is rightly refused (415, documented); every other check stays on.
                case.call_and_validate(excluded_checks=[positive_data_acceptance])

            check()
    print(f"\nschemathesis cases per operation: {counts}, total {sum(counts.values())}")
    assert counts.get("POST /predict", 0) >= PREDICT_CASES
    assert sum(counts.values()) >= 500
