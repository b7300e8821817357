"""The OCSF validator itself (harness/ocsf.py): it passes good events of every class Gatehouse
emits and fails bad ones. Pure Python, no gateway."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from harness import ocsf

METADATA = {
    "version": ocsf.VERSION,
    "product": {"name": "Gatehouse", "vendor_name": "Gatehouse"},
    "uid": "gatehouse-1:7",
    "log_name": "audit",
    "event_code": "request",
    "correlation_uid": "237f91547b8e4ecc269f490a0c0135c8",
    "original_time": "2026-12-02T17:38:24.455Z",
}


def classification(class_uid: int, class_name: str, category_uid: int, category_name: str, activity: tuple) -> dict:
    activity_id, activity_name, type_caption = activity
    return {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {type_caption}",
        "severity_id": 1,
        "severity": "Informational",
        "time": 1796233104455,
        "metadata": copy.deepcopy(METADATA),
    }


def api_call() -> dict[str, Any]:
    return {
        **classification(6003, "API Activity", 6, "Application Activity", (99, "tools/call", "Other")),
        "actor": {
            "user": {"uid": "alice", "name": "alice", "groups": [{"name": "eng"}]},
            "session": {"uid": "upstream-session-1"},
        },
        "api": {
            "operation": "tools/call",
            "service": {"name": "everything"},
            "version": "2025-11-25",
            "request": {"uid": "237f91547b8e4ecc269f490a0c0135c8", "data": {"arguments": {"who": "[MASKED:email]"}}},
        },
        "resources": [{"name": "lookup", "type": "mcp_tool"}],
        "http_request": {"http_method": "POST", "url": {"path": "/mcp"}, "user_agent": "python-httpx/0.28.1"},
        "src_endpoint": {"name": "unknown"},
        "status_id": 1,
        "status": "Success",
        "status_detail": 'allowed by rule "other-tools"',
        "action_id": 1,
        "action": "Allowed",
        "disposition_id": 1,
        "disposition": "Allowed",
        "message_context": {"service": {"name": "everything"}, "uid": "upstream-session-1"},
        "unmapped": {"writer": "gatehouse-1", "seq": 7, "hash": "ab" * 32, "masked": {"email": 1}},
        "metadata": {**METADATA, "profiles": ["security_control", "ai_operation"]},
    }


def token_refused() -> dict[str, Any]:
    return {
        **classification(3002, "Authentication", 3, "Identity & Access Management", (1, "Logon", "Logon")),
        "user": {"name": "unknown"},
        "service": {"name": "everything"},
        "auth_protocol_id": 6,
        "auth_protocol": "OAUTH 2.0",
        "status_id": 2,
        "status": "Failure",
        "status_code": "401",
        "status_detail": "the bearer token has expired",
        "http_request": {"http_method": "POST", "url": {"path": "/mcp"}},
    }


def approval_granted() -> dict[str, Any]:
    return {
        **classification(3004, "Entity Management", 3, "Identity & Access Management", (3, "Update", "Update")),
        "actor": {"user": {"uid": "bob", "name": "bob", "groups": [{"name": "approvers"}]}},
        "entity": {
            "uid": "apr_001bd3c67c285eae80aa5bb9",
            "name": "tools/call deploy",
            "type_id": 99,
            "type": "Approval",
            "data": {"event": "approved", "rule": "deploy-needs-approval"},
        },
        "disposition_id": 8,
        "disposition": "Approved",
        "metadata": {**METADATA, "profiles": ["security_control"]},
    }


def config_loaded() -> dict[str, Any]:
    return {
        **classification(6002, "Application Lifecycle", 6, "Application Activity", (3, "Start", "Start")),
        "app": {"name": "Gatehouse", "vendor_name": "Gatehouse"},
        "message": "Configuration loaded from /etc/gatehouse/gatehouse.yaml",
        "unmapped": {"config": {"event": "loaded", "config_sha256": "00" * 32}},
    }


def unknown_record() -> dict[str, Any]:
    return {
        **classification(0, "Base Event", 0, "Uncategorized", (99, "future_kind", "Other")),
        "unmapped": {"kind": "future_kind", "data": {"anything": [1, None, "x"]}},
    }


GOOD = {
    "api_activity": api_call,
    "authentication": token_refused,
    "entity_management": approval_granted,
    "application_lifecycle": config_loaded,
    "base_event": unknown_record,
}


@pytest.mark.parametrize("make", GOOD.values(), ids=GOOD.keys())
def test_a_good_event_of_each_class_validates(make) -> None:
    ocsf.validate(make())


def test_every_class_gatehouse_emits_has_a_schema() -> None:
    assert ocsf.class_uids() == [0, 3002, 3004, 6002, 6003]


def fails(event: Any, *expected: str) -> str:
    """The validator's message for `event`, which must name each of `expected`."""
    with pytest.raises(AssertionError) as caught:
        ocsf.validate(event)
    message = str(caught.value)
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"
    return message


def without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    parent = event
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return event


def test_a_wrong_type_fails() -> None:
    event = api_call()
    event["time"] = "2026-12-02T17:38:24.455Z"
    fails(event, "at /time:", "is not of type 'integer'")
    event = api_call()
    event["actor"]["user"]["groups"] = ["eng"]
    fails(event, "at /actor/user/groups/0:", "is not of type 'object'")


def test_a_missing_required_attribute_fails() -> None:
    fails(without(api_call(), "actor"), "'actor' is a required property")
    fails(without(api_call(), "api", "request", "uid"), "at /api/request:", "'uid' is a required property")
    fails(without(token_refused(), "user"), "'user' is a required property")
    fails(without(approval_granted(), "entity"), "'entity' is a required property")
    fails(without(config_loaded(), "app"), "'app' is a required property")
    fails(without(unknown_record(), "metadata", "product"), "'product' is a required property")


def test_a_value_outside_its_enum_fails() -> None:
    event = api_call()
    event["activity_id"], event["type_uid"] = 7, 600307
    fails(event, "at /activity_id:", "7 is not one of")
    event = api_call()
    event["disposition_id"] = 42
    fails(event, "at /disposition_id:", "42 is not one of")
    event = token_refused()
    event["auth_protocol_id"] = 13
    fails(event, "at /auth_protocol_id:")


def test_an_unknown_class_fails() -> None:
    event = api_call()
    event["class_uid"] = 4242
    fails(event, "class_uid 4242 has no OCSF")
    fails([api_call()], "is a JSON object")


def test_type_uid_must_follow_class_and_activity() -> None:
    event = api_call()
    event["type_uid"] = 600302
    fails(event, "type_uid is class_uid * 100 + activity_id")


def test_an_attribute_the_schema_does_not_define_fails() -> None:
    event = api_call()
    event["subject"] = "alice"
    fails(event, "'subject' was unexpected")
    event = api_call()
    event["api"]["request"]["masked"] = {"email": 1}
    fails(event, "at /api/request:", "'masked' was unexpected")
    # What OCSF has no attribute for belongs in unmapped, which takes anything.
    event = api_call()
    event["unmapped"]["anything"] = {"nested": [1, 2]}
    ocsf.validate(event)


def test_a_profile_attribute_needs_its_profile_named() -> None:
    event = api_call()
    event["metadata"]["profiles"] = ["ai_operation"]
    fails(event, "at /disposition_id: an attribute of profile security_control", "at /action_id:")
    event = approval_granted()
    del event["metadata"]["profiles"]
    fails(event, "at /disposition_id:")
    event = api_call()
    event["metadata"]["profiles"].append("no_such_profile")
    fails(event, "at /metadata/profiles/2:")


def test_a_required_attribute_of_a_named_profile_is_required() -> None:
    event = api_call()
    event["metadata"]["profiles"].append("cloud")
    fails(event, "'cloud' is a required property")


def test_a_constraint_fails() -> None:
    event = token_refused()
    event["user"] = {"type_id": 0, "type": "Unknown"}
    fails(event, "at /user:", "at least one of ['account', 'name', 'uid']")
    event = without(token_refused(), "service")
    fails(event, "at least one of ['service', 'dst_endpoint']")
    event = api_call()
    event["actor"] = {}
    fails(event, "at /actor:")


def test_null_and_bad_formats_fail() -> None:
    event = api_call()
    event["status_detail"] = None
    fails(event, "at /status_detail:", "None is not of type 'string'")
    event = api_call()
    event["src_endpoint"] = {"ip": "not-an-ip"}
    fails(event, "at /src_endpoint/ip:", "does not match")


def test_an_enum_sibling_must_be_its_caption() -> None:
    event = api_call()
    event["status"] = "OK"
    fails(event, "at /status:", "'Success' was expected")
    event = api_call()
    event["severity"] = "Info"
    fails(event, "at /severity:")
    # For 99 (Other) the sibling is the source's own word.
    assert api_call()["activity_name"] == "tools/call"


def test_the_event_version_is_the_schema_version() -> None:
    event = api_call()
    event["metadata"]["version"] = "1.3.0"
    fails(event, "at /metadata/version:")


def test_missing_recommended_attributes_are_listed() -> None:
    missing = ocsf.recommended_missing(api_call())
    assert "http_response" in missing
    assert "resources[0].uid" in missing
    assert "status_id" not in missing
