"""Generate schemas/json/*.schema.json from the models: `python -m schemas.jsonschema`."""

from __future__ import annotations

import json
from pathlib import Path

from schemas import MODELS

JSON_DIR = Path(__file__).parent / "json"


def render(name: str) -> str:
    schema = MODELS[name].model_json_schema(mode="serialization")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"slipguard/{name}.schema.json",
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    JSON_DIR.mkdir(exist_ok=True)
    for name in MODELS:
        (JSON_DIR / f"{name}.schema.json").write_text(render(name), encoding="utf-8")
        print(f"wrote schemas/json/{name}.schema.json")


if __name__ == "__main__":
    main()
