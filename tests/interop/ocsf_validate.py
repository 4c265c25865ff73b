"""Validates OCSF events (JSON lines on a file) against the OCSF JSON schema of their class.

Usage: ocsf_validate.py EVENTS.jsonl CLASS_NAME VERSION [PROFILE ...]
The schema comes from the `ocsf-json-schema` package (the OCSF schema bundled for offline
use); `jsonschema` checks each event. Prints the count and exits 0 when every event is
valid; prints the first errors and exits 1 otherwise.
"""
import json
import sys

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema


def main() -> int:
    path, class_name, version, *profiles = sys.argv[1:]
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version)).get_class_schema(
        class_name, profiles=profiles
    )
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    n = bad = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            n += 1
            errors = list(validator.iter_errors(json.loads(line)))
            if errors:
                bad += 1
                if bad <= 3:
                    for e in errors[:5]:
                        print(f"event {n}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    print(f"{n} events, {bad} invalid")
    return 0 if n > 0 and bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
