"""hivemind's verdicts on DHT records for the schema tests (kwaai-core/tests/dht_schema_python.rs).

stdin: JSON {"records": [[key_hex, subkey_hex, value_hex, expiration], ...]}
stdout: JSON {"strict": [bool, ...], "merged": [bool, ...]}: CompositeValidator.validate of each
record with the validators of dht_schemas.strict_validators() and merged_validators().
"""
import json
import logging
import sys

from hivemind.dht.validation import CompositeValidator, DHTRecord

from dht_schemas import merged_validators, strict_validators


def verdict(validator, record):
    try:
        return bool(validator.validate(record))
    except Exception as e:  # hivemind lets some decoding errors escape; a store then fails
        logging.debug("validate raised %r", e)
        return False


def main():
    request = json.load(sys.stdin)
    records = [
        DHTRecord(bytes.fromhex(k), bytes.fromhex(s), bytes.fromhex(v), float(t)) for k, s, v, t in request["records"]
    ]
    strict, merged = CompositeValidator(strict_validators()), CompositeValidator(merged_validators())
    print(json.dumps({"strict": [verdict(strict, r) for r in records], "merged": [verdict(merged, r) for r in records]}))


if __name__ == "__main__":
    main()
