"""JSON Schemas generated from the models, so editors validate manifests as they are typed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.files.atomic import write_atomically
from reconciler.offline.snapshot import Snapshot
from reconciler.spec.models import Domain, Host
from reconciler.spec.storage import Pool

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema: one per kind, plus ``manifest.schema.json`` accepting any kind."""
    host = Host.model_json_schema(by_alias=True)
    domain = Domain.model_json_schema(by_alias=True)
    pool = Pool.model_json_schema(by_alias=True)
    combined = {
        "$schema": SCHEMA_DIALECT,
        "title": "virt-reconcile manifest",
        "description": "A Host, a Domain or a Pool document; a file may hold many, separated by ---.",
        "anyOf": [
            {"$ref": "host.schema.json"},
            {"$ref": "domain.schema.json"},
            {"$ref": "pool.schema.json"},
        ],
    }
    return {
        "host.schema.json": {"$schema": SCHEMA_DIALECT, **host},
        "domain.schema.json": {"$schema": SCHEMA_DIALECT, **domain},
        "pool.schema.json": {"$schema": SCHEMA_DIALECT, **pool},
        "manifest.schema.json": combined,
        "snapshot.schema.json": {"$schema": SCHEMA_DIALECT, **Snapshot.model_json_schema(by_alias=True)},
    }


def render(schema: dict[str, Any]) -> str:
    """Stable text for a schema file."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema into ``directory``; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / name
        write_atomically(path, render(schema), mode=0o644)
        written.append(path)
    return written
