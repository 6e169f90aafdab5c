"""The OpenAPI document (engine/openapi.yaml, served at /api/spec.yaml) matches the running server.

Schemathesis generates valid and invalid requests for every operation and checks that
nothing answers 5xx, every status and content type is documented, every response body
conforms to its schema, invalid requests are refused, and auth is not ignored.

Not checked: that every schema-valid request is accepted. Whether a request fits depends
on the model (vocabulary, context window) and the caller's quota, which a schema cannot
say; those refusals are documented 4xx answers.

(Schemathesis's own pytest plugin does not run under pytest 9, so operations are
parametrized here and each runs as a Hypothesis test over ``operation.as_strategy``.)
"""

from __future__ import annotations

from importlib import resources

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

SPEC_TENANT = "spec-admin"
SPEC_FILE = resources.files("potluck.engine").joinpath("openapi.yaml")
CONFIG = SchemathesisConfig.from_dict({"checks": {"positive_data_acceptance": {"enabled": False}}})
SCHEMA = schemathesis.openapi.from_path(str(SPEC_FILE), config=CONFIG)
OPERATIONS = [result.ok().label for result in SCHEMA.get_all_operations()]
EXAMPLES = {GenerationMode.POSITIVE: 6, GenerationMode.NEGATIVE: 6}


@pytest.fixture(scope="module")
def spec_auth(engine_proc) -> dict:
    admin = engine_proc.client(SPEC_TENANT, admin=True)
    # Keep generated generations short: larger max_tokens are refused (413) by the quota.
    r = admin.put(f"/api/admin/quotas/users/{SPEC_TENANT}", json={"max_tokens_per_request": 3})
    assert r.status_code == 200
    return {"Authorization": f"Bearer {admin.token}"}


def test_the_served_document_is_the_checked_one(engine_proc):
    r = requests.get(engine_proc.url + "/api/spec.yaml", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/yaml")
    assert r.content == SPEC_FILE.read_bytes()


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=str)
@pytest.mark.parametrize("label", OPERATIONS)
def test_server_conforms_to_its_openapi_document(engine_proc, spec_auth, label, mode):
    operation = SCHEMA.find_operation_by_label(label)
    if mode is GenerationMode.NEGATIVE and not (operation.body or operation.path_parameters):
        pytest.skip("nothing in this operation can be made invalid")

    model = engine_proc.status()["model"]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        # The served model's name is configuration, not schema: name it in valid requests,
        # or nearly all of them would only exercise the 404 for an unknown model.
        if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        case.call_and_validate(base_url=engine_proc.url, headers=spec_auth, timeout=60)

    check()
