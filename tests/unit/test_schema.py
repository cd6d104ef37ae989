"""The committed JSON Schemas match the models, and the example manifests point editors at them."""

import json
from pathlib import Path

from reconciler.ops.schema import render, schemas
from reconciler.spec.manifests import load_manifests, manifest_files
from tests.helpers import REPO, cli


def test_committed_schemas_match_the_models():
    for name, schema in schemas().items():
        committed = REPO / "schemas" / name
        assert committed.exists(), f"schemas/{name} is missing: run `virt-reconcile schema`"
        assert committed.read_text() == render(schema), (
            f"schemas/{name} is stale: run `virt-reconcile schema`"
        )


def test_schema_command_writes_the_same_files(tmp_path: Path):
    result = cli("schema", "--out", str(tmp_path))
    assert result.code == 0
    for name in schemas():
        assert (tmp_path / name).read_text() == (REPO / "schemas" / name).read_text()


def test_sizes_are_strings_with_units_in_the_schema():
    memory = schemas()["domain.schema.json"]["$defs"]["DomainSpec"]["properties"]["memory"]
    assert memory["type"] == "string" and "GiB" in memory["pattern"]


def test_examples_name_the_schema_and_are_valid():
    files = manifest_files(REPO / "manifests")
    assert files
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        target = (path.parent / first.split("=", 1)[1]).resolve()
        assert json.loads(target.read_text())["anyOf"]
    load_manifests(REPO / "manifests")


def _undocumented(schema: dict, where: str) -> list[str]:
    """Every property, at any depth of a schema, without a description, as ``Object.property``."""
    missing = []
    for name, prop in schema.get("properties", {}).items():
        if not prop.get("description"):
            missing.append(f"{where}.{name}")
    for name, definition in schema.get("$defs", {}).items():
        missing.extend(_undocumented(definition, name))
    return missing


def test_every_field_has_a_description_for_editors():
    for file, schema in schemas().items():
        missing = _undocumented(schema, schema.get("title", file))
        assert not missing, f"{file}: add Field(description=...) to {', '.join(missing)}"


def test_every_model_has_a_description():
    for file, schema in schemas().items():
        for name, definition in {"": schema, **schema.get("$defs", {})}.items():
            assert definition.get("description"), f"{file}: {name or 'the root'} has no description"
