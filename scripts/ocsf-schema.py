#!/usr/bin/env python3
"""Writes JSON Schemas (draft 2020-12) of the OCSF event classes Gatehouse emits, from a compiled
OCSF schema, for tests/harness/ocsf.py.

Usage:
    scripts/ocsf-schema.py COMPILED.json OUT_DIR --source "ocsf/ocsf-schema 1.8.0 (commit ...)"

It writes OUT_DIR/<class>.schema.json for each class below, and OUT_DIR/objects.schema.json with
every OCSF object they use (the class schemas refer to it by its `$id`).

COMPILED.json is the output of the OCSF schema compiler (PyPI `ocsf-schema-compiler`, the
compiler the OCSF Server uses) run on a checkout of github.com/ocsf/ocsf-schema without its
platform extensions:

    git -C ocsf-schema checkout 1.8.0
    ocsf-schema-compiler --ignore-platform-extensions ocsf-schema > ocsf-1.8.0.json

The compiler resolves what the schema's source files leave open (`extends`, `$include`,
profiles, dictionary overrides, enum merging); this script only encodes the result. It follows
the OCSF Server's event validator (`Schema.Validator2`) rule by rule:

- an attribute's dictionary type gives its JSON type, and the type's regex, max_len and range
  (integer_t is 64-bit, long_t 128-bit, as the server checks); an enum lists its values;
- `required` attributes are required; `recommended` ones are listed under
  `x-ocsf-recommended` (the server only warns when they are missing);
- attributes nobody defined are refused (`additionalProperties: false`), except in an object
  with no attributes at all (`object`, the type of `unmapped`), which takes anything;
- `at_least_one` and `just_one` constraints become `anyOf` and `oneOf`;
- an attribute that comes from a profile exists only when `metadata.profiles` names one of its
  profiles. At the top level this is an `if`/`then`; inside objects JSON Schema cannot look at
  the event's metadata, so the attribute carries `x-ocsf-profiles` and the validator drops it
  for events that do not name the profile (`harness.ocsf.schema_for`);
- `type_uid` must be `class_uid * 100 + activity_id`, `metadata.version` the schema's version,
  and each name in `metadata.profiles` a profile of the schema.

Stricter than the server, on purpose (our own events must not need its warnings): `null` is
never a value (the server treats it as absent), a string must match its type's regex (the
server warns), and an enum's sibling (`activity_name` beside `activity_id`, ...) must be the
caption of its value unless the value is 99, Other (the server warns).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# The classes Gatehouse maps records to (authz-service/src/export/ocsf.rs, docs/OCSF.md).
CLASSES = ("api_activity", "authentication", "entity_management", "application_lifecycle", "base_event")

INT64 = (-(2**63), 2**63 - 1)
INT128 = (-(2**127), 2**127 - 1)
PRIMITIVES = {
    "string_t": {"type": "string"},
    "integer_t": {"type": "integer", "minimum": INT64[0], "maximum": INT64[1]},
    "long_t": {"type": "integer", "minimum": INT128[0], "maximum": INT128[1]},
    "float_t": {"type": "number"},
    "boolean_t": {"type": "boolean"},
    "json_t": {},
}
OTHER = 99


class Generator:
    def __init__(self, compiled: dict[str, Any]) -> None:
        self.compiled = compiled
        self.version: str = compiled["version"]
        self.types: dict[str, Any] = compiled["dictionary"]["types"]["attributes"]
        self.objects: dict[str, Any] = compiled["objects"]
        self.profiles = sorted(compiled["profiles"])
        self.objects_id = f"urn:gatehouse:ocsf:{self.version}:objects"

    def type_schema(self, type_name: str) -> dict[str, Any]:
        """The JSON Schema of a dictionary type: its primitive, then the subtype's limits."""
        chain = [type_name]
        while "type" in self.types[chain[-1]]:
            chain.append(self.types[chain[-1]]["type"])
        schema = dict(PRIMITIVES[chain[-1]])
        # The server checks a subtype's own limit first and its super type's only without one.
        for name in reversed(chain):
            t = self.types[name]
            if "regex" in t:
                schema["pattern"] = t["regex"]
            if "max_len" in t:
                schema["maxLength"] = t["max_len"]
            if "range" in t:
                schema["minimum"], schema["maximum"] = t["range"]
            if "values" in t:
                schema["enum"] = t["values"]
        return schema

    def attribute_schema(self, attr: dict[str, Any], refs: set[str]) -> dict[str, Any]:
        if attr["type"] == "object_t":
            refs.add(attr["object_type"])
            value: dict[str, Any] = {"$ref": f"{self.objects_id}#/$defs/{attr['object_type']}"}
        else:
            value = self.type_schema(attr["type"])
            if attr.get("enum"):
                enum = [int(k) if value.get("type") == "integer" else k for k in attr["enum"]]
                value["enum"] = sorted(enum)
        schema: dict[str, Any] = {"title": attr.get("caption", "")}
        if attr.get("is_array"):
            schema.update(type="array", items=value)
        else:
            schema.update(value)
        if attr.get("profiles"):
            schema["x-ocsf-profiles"] = sorted(attr["profiles"])
        return schema

    def structure(self, item: dict[str, Any], refs: set[str], top_level: bool) -> dict[str, Any]:
        """A class or an object: its attributes, requirements, constraints and siblings."""
        attributes: dict[str, Any] = item.get("attributes") or {}
        schema: dict[str, Any] = {"title": item.get("caption", item["name"]), "type": "object"}
        if not attributes:
            # The server takes anything in an object that defines no attributes (`object`).
            return schema
        schema["properties"] = {name: self.attribute_schema(a, refs) for name, a in sorted(attributes.items())}
        schema["additionalProperties"] = False
        required = sorted(
            n for n, a in attributes.items() if a.get("requirement") == "required" and not a.get("profiles")
        )
        if required:
            schema["required"] = required
        recommended = sorted(n for n, a in attributes.items() if a.get("requirement") == "recommended")
        if recommended:
            schema["x-ocsf-recommended"] = recommended
        rules: list[dict[str, Any]] = []
        rules += self.profile_rules(item, attributes, top_level)
        rules += constraint_rules(item.get("constraints") or {})
        rules += sibling_rules(attributes)
        if rules:
            schema["allOf"] = rules
        return schema

    def profile_rules(self, item: dict[str, Any], attributes: dict[str, Any], top_level: bool) -> list[dict[str, Any]]:
        by_profiles: dict[tuple[str, ...], list[str]] = {}
        for name, a in attributes.items():
            if a.get("profiles"):
                by_profiles.setdefault(tuple(sorted(a["profiles"])), []).append(name)
        if not top_level:
            for profiles, names in by_profiles.items():
                needed = [n for n in names if attributes[n].get("requirement") == "required"]
                if needed:
                    # Not expressible inside an object; no OCSF version so far has one.
                    sys.exit(f"{item['name']}: {needed} required with profiles {profiles}: not supported")
            return []
        rules = []
        for profiles, names in sorted(by_profiles.items()):
            named = {
                "required": ["metadata"],
                "properties": {
                    "metadata": {
                        "required": ["profiles"],
                        "properties": {"profiles": {"anyOf": [{"contains": {"const": p}} for p in profiles]}},
                    }
                },
            }
            refused = refused_without(list(profiles))
            rule: dict[str, Any] = {"if": named, "else": {"properties": {n: refused for n in sorted(names)}}}
            needed = sorted(n for n in names if attributes[n].get("requirement") == "required")
            if needed:
                rule["then"] = {"required": needed}
            rules.append(rule)
        return rules

    def class_schema(self, name: str, source: str, refs: set[str]) -> dict[str, Any]:
        """A class; the objects it refers to are added to `refs`."""
        cls = self.compiled["classes"][name]
        schema: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"urn:gatehouse:ocsf:{self.version}:{name}",
            "description": (
                f"OCSF {self.version} class {cls['caption']} ({cls['uid']}), generated by scripts/ocsf-schema.py"
                f" from {source}. Do not edit; regenerate."
            ),
            "x-ocsf-class-uid": cls["uid"],
        }
        schema.update(self.structure(cls, refs, top_level=True))
        schema["allOf"] = schema.get("allOf", []) + self.event_rules(cls)
        return schema

    def objects_schema(self, refs: set[str], source: str) -> dict[str, Any]:
        """Every object the classes refer to, and those they refer to in turn."""
        defs: dict[str, Any] = {}
        pending = sorted(refs)
        while pending:
            obj = pending.pop()
            if obj in defs:
                continue
            found: set[str] = set()
            defs[obj] = self.structure(self.objects[obj], found, top_level=False)
            pending += sorted(found - defs.keys())
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": self.objects_id,
            "description": (
                f"OCSF {self.version} objects used by the class schemas beside this file, generated by"
                f" scripts/ocsf-schema.py from {source}. Do not edit; regenerate."
            ),
            "$defs": dict(sorted(defs.items())),
        }

    def event_rules(self, cls: dict[str, Any]) -> list[dict[str, Any]]:
        activities = sorted(int(k) for k in cls["attributes"]["activity_id"]["enum"])
        type_uid = {
            "title": "type_uid is class_uid * 100 + activity_id",
            "anyOf": [
                {"properties": {"activity_id": {"const": a}, "type_uid": {"const": cls["uid"] * 100 + a}}}
                for a in activities
            ],
        }
        metadata = {
            "properties": {
                "metadata": {
                    "properties": {
                        "version": {"const": self.version},
                        "profiles": {"items": {"enum": self.profiles}},
                    }
                }
            }
        }
        return [type_uid, metadata]


def refused_without(profiles: list[str]) -> dict[str, Any]:
    """The schema of an attribute whose profiles the event does not name (harness.ocsf uses it too)."""
    return {"not": {}, "x-ocsf-refused": f"an attribute of profile {' or '.join(profiles)}, not in metadata.profiles"}


def constraint_rules(constraints: dict[str, list[str]]) -> list[dict[str, Any]]:
    rules = []
    for kind, names in sorted(constraints.items()):
        alternatives = [{"required": [n]} for n in names]
        if kind == "at_least_one":
            rules.append({"title": f"at least one of {names}", "anyOf": alternatives})
        elif kind == "just_one":
            rules.append({"title": f"exactly one of {names}", "oneOf": alternatives})
        else:
            sys.exit(f"unknown constraint {kind!r}")
    return rules


def sibling_rules(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    """An enum's sibling holds the caption of its value (99, Other: the source's own word)."""
    rules = []
    for name, a in sorted(attributes.items()):
        sibling = a.get("sibling")
        if not a.get("enum") or not sibling or a.get("is_array") or sibling not in attributes:
            continue
        for value, entry in sorted(a["enum"].items(), key=lambda kv: int(kv[0])):
            if int(value) == OTHER:
                continue
            rules.append(
                {
                    "if": {"required": [name, sibling], "properties": {name: {"const": int(value)}}},
                    "then": {"properties": {sibling: {"const": entry["caption"]}}},
                }
            )
    return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("compiled", type=Path, help="the OCSF schema compiler's output")
    parser.add_argument("out", type=Path, help="directory to write <class>.schema.json into")
    parser.add_argument("--source", required=True, help="what it was compiled from, for each schema's description")
    args = parser.parse_args()
    generator = Generator(json.loads(args.compiled.read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    refs: set[str] = set()
    schemas = {name: generator.class_schema(name, args.source, refs) for name in CLASSES}
    schemas["objects"] = generator.objects_schema(refs, args.source)
    for name, schema in schemas.items():
        path = args.out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=1, ensure_ascii=False) + "\n")
        print(f"Wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
