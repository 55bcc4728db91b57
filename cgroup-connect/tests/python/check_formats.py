#!/usr/bin/env python3
"""Checks the blocker's outputs with the parsers operators' tools use (tests/formats.rs runs it).

  check_formats.py schema SCHEMA FILE [--lines]
      Validates FILE (one JSON document, or with --lines one per line) against the JSON Schema
      (draft 2020-12) SCHEMA, formats included; prints the number of documents checked.
  check_formats.py metrics openmetrics|prometheus FILE
      Parses FILE with prometheus_client's OpenMetrics or Prometheus text (0.0.4) parser and
      prints the families as JSON: [{"name", "type", "unit", "samples": [{"name", "labels",
      "value"}]}]. Prometheus text must also be what the Prometheus server's own parser takes:
      no # EOF, no # UNIT, and only the types it knows.
Exits 1 with the reason on any failure.
"""
import json
import sys

PROMETHEUS_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def schema(schema_path, path, lines):
    import jsonschema

    with open(schema_path, encoding="utf-8") as f:
        schema_doc = json.load(f)
    validator_class = jsonschema.Draft202012Validator
    validator_class.check_schema(schema_doc)
    validator = validator_class(schema_doc, format_checker=validator_class.FORMAT_CHECKER)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    docs = text.splitlines() if lines else [text]
    if not docs:
        fail(f"{path}: no document")
    for n, doc in enumerate(docs, 1):
        try:
            value = json.loads(doc)
        except json.JSONDecodeError as e:
            fail(f"{path}: document {n} is not JSON ({e}): {doc!r}")
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            fail(
                f"{path}: document {n} does not match {schema_path}:\n"
                + "\n".join(f"  at {list(e.absolute_path)}: {e.message}" for e in errors)
                + f"\n{doc}"
            )
    print(len(docs))


def metrics(kind, path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if kind == "openmetrics":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    elif kind == "prometheus":
        from prometheus_client.parser import text_string_to_metric_families

        for line in text.splitlines():
            if line.startswith("# EOF") or line.startswith("# UNIT"):
                fail(f"Prometheus text has an OpenMetrics line: {line}")
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) != 4 or parts[3] not in PROMETHEUS_TYPES:
                    fail(f"a type the Prometheus text format does not have: {line}")
    else:
        fail(f"unknown format {kind}")
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parsers raise ValueError and others
        fail(f"the {kind} parser rejects the text: {e!r}\n{text}")
    out = [
        {
            "name": fam.name,
            "type": fam.type,
            "unit": fam.unit,
            "samples": [
                {"name": s.name, "labels": dict(s.labels), "value": s.value}
                for s in fam.samples
            ],
        }
        for fam in families
    ]
    json.dump(out, sys.stdout)


def main(argv):
    if len(argv) >= 3 and argv[0] == "schema":
        schema(argv[1], argv[2], "--lines" in argv[3:])
    elif len(argv) == 3 and argv[0] == "metrics":
        metrics(argv[1], argv[2])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
