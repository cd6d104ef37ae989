"""Manifests written to hurt: each is refused at load with a file and a line, quickly, and never
raises anything but ManifestError (a pull request's author is not trusted)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from reconciler.errors import ManifestError
from reconciler.spec.manifests import load_manifests
from tests.helpers import host_yaml, write

MIB = 1024 * 1024
DOMAIN_HEAD = "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\n"


def problems(root: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifests(root)
    assert all(p.line is not None for p in info.value.problems), info.value
    return [str(p) for p in info.value.problems]


def domain(root: Path, spec_lines: str) -> None:
    """A host, and a domain whose spec (from line 5 of d.yaml) is ``spec_lines``."""
    write(root, "h.yaml", host_yaml())
    write(root, "d.yaml", DOMAIN_HEAD + "spec:\n" + spec_lines)


# ------------------------------------------------------------------ control characters


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('  boot: {kernel: /boot/vmlinuz, cmdline: "console=ttyS0\\x01"}', "spec.boot.cmdline"),
        ('  boot: {kernel: "/boot/vm\\tlinuz"}', "spec.boot.kernel"),
        ('  disks: [{path: "/img/a\\x7f.qcow2"}]', "spec.disks[0].path"),
        ('  interfaces: [{network: "default\\x85"}]', "spec.interfaces[0].network"),
        ('  interfaces: [{bridge: "br0\\e[2J"}]', "spec.interfaces[0].bridge"),
        ('  interfaces: [{network: default, mac: "52:54:00:12:34:5\\n"}]', "spec.interfaces[0].mac"),
        ('  machine: "q35\\uFFFE"', "spec.machine"),
    ],
)
def test_a_control_character_in_any_string_is_refused_at_load(tmp_path, line, field):
    """They passed validation, then libvirt's XML could not take them (ValueError in the merge)."""
    domain(tmp_path, "  memory: 1GiB\n" + line + "\n")
    found = [p for p in problems(tmp_path) if p.startswith(f"d.yaml:6: {field}: character U+")]
    assert found, problems(tmp_path)
    assert "is not allowed" in found[0]


def test_a_line_break_in_a_literal_block_and_a_control_character_in_a_label_are_refused(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\n"
        'metadata:\n  name: a\n  labels: {team: "ops\\x00"}\n'
        "spec:\n  memory: 1GiB\n  boot:\n    kernel: /k\n    cmdline: |\n      one\n      two\n",
    )
    assert problems(tmp_path) == [
        "d.yaml:5: metadata.labels.team: character U+0000 at position 4 is not allowed: manifest strings "
        "hold no control characters (tabs and line breaks included) and nothing XML cannot carry",
        "d.yaml:10: spec.boot.cmdline: character U+000A at position 4 is not allowed: manifest strings "
        "hold no control characters (tabs and line breaks included) and nothing XML cannot carry",
    ]


def test_a_control_character_in_a_key_is_shown_escaped(tmp_path):
    domain(tmp_path, '  memory: 1GiB\n  "zz\\e[31m": 1\n')
    found = problems(tmp_path)
    assert "d.yaml:6: spec.zz\\u001b[31m: in the key: character U+001B" in found[0]
    assert not any("\x1b" in p for p in found)


def test_a_control_character_in_a_file_name_is_refused(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(tmp_path, "d\x1b[2J.yaml", DOMAIN_HEAD + "spec: {memory: 1GiB}\n")
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    assert [str(p) for p in info.value.problems] == ["d\\u001b[2J.yaml: a control character in the file name"]


# ------------------------------------------------------------------ numbers and booleans


@pytest.mark.parametrize(
    ("overcommit", "message"),
    [
        ("cpu: {ratio: .inf}", "spec.overcommit.cpu.ratio: Input should be a finite number"),
        ("cpu: {ratio: .nan}", "spec.overcommit.cpu.ratio: Input should be a finite number"),
        ("cpu: {ratio: 1.0e+308}", "spec.overcommit.cpu.ratio: Input should be less than or equal to 1000"),
        ("memory: {ratio: 1001}", "spec.overcommit.memory.ratio: Input should be less than or equal"),
        ("memory: {ratio: true}", "spec.overcommit.memory.ratio: expected a number, but YAML read true"),
        ('cpu: {ratio: "4"}', "spec.overcommit.cpu.ratio: expected a number, but YAML read '4' as str"),
        ("cpu: {countInactive: 1}", "spec.overcommit.cpu.countInactive: expected true or false, but"),
    ],
)
def test_ratios_are_finite_positive_numbers_with_a_maximum(tmp_path, overcommit, message):
    """.inf passed validation, then the limit arithmetic raised OverflowError."""
    write(tmp_path, "h.yaml", host_yaml() + f"  overcommit: {{{overcommit}}}\n")
    [problem] = problems(tmp_path)
    assert problem.startswith(f"h.yaml:8: {message}"), problem


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("vcpus: true", "spec.vcpus: expected a whole number, but YAML read true as bool"),
        ("vcpus: 2.0", "spec.vcpus: expected a whole number, but YAML read 2.0 as float"),
        ('vcpus: "2"', "spec.vcpus: expected a whole number, but YAML read '2' as str"),
        ("autostart: 1", "spec.autostart: expected true or false, but YAML read 1 as int"),
        ('deletionProtection: "true"', "spec.deletionProtection: expected true or false"),
        ("memory: 0KiB", "spec.memory: Input should be greater than 0"),
        ("memory: 17000TiB", "spec.memory: size '17000TiB' is larger than 16 PiB"),
        (f"memory: {'9' * 400}.5GiB", "spec.memory: size '999"),
    ],
)
def test_counts_flags_and_sizes_are_taken_as_written_and_bounded(tmp_path, spec, message):
    """``vcpus: true`` was taken as 1; a 400-digit size raised OverflowError."""
    domain(tmp_path, f"  {spec}\n" if spec.startswith("memory") else f"  memory: 1GiB\n  {spec}\n")
    line = 5 if spec.startswith("memory") else 6
    [problem] = problems(tmp_path)
    assert problem.startswith(f"d.yaml:{line}: {message}"), problem


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("capacity: {cpus: true}", "spec.capacity.cpus: expected a whole number, but YAML read true"),
        ("capacity: {cpus: 1000000000000000000000000000000}", "spec.capacity.cpus: Input should be less"),
        ("capacity: {memory: 0KiB}", "spec.capacity.memory: Input should be greater than 0"),
        ("maxDeletions: 1.5", "spec.maxDeletions: expected a whole number, but YAML read 1.5 as float"),
        ('prune: "yes"', "spec.prune: expected true or false, but YAML read 'yes' as str"),
    ],
)
def test_host_numbers_are_strict_and_bounded(tmp_path, spec, message):
    text = host_yaml().replace("  capacity: {cpus: 16, memory: 64GiB}\n", "").replace("  prune: false\n", "")
    write(tmp_path, "h.yaml", text + f"  {spec}\n")
    [problem] = problems(tmp_path)
    assert problem.startswith(f"h.yaml:6: {message}"), problem


def test_a_number_too_long_for_any_field_is_refused_before_python_reads_it(tmp_path):
    """A 5,000-digit integer raised ValueError (Python's int conversion limit) out of the loader."""
    domain(tmp_path, "  memory: 1GiB\n  vcpus: " + "9" * 5000 + "\n")
    assert problems(tmp_path) == ["d.yaml:6: a number of more than 100 digits"]


# ------------------------------------------------------------------ nesting, aliases, size


def test_deep_nesting_under_an_unknown_key_is_refused_with_its_line(tmp_path):
    """~998 nested lists under an unknown key raised RecursionError in the line finder."""
    domain(tmp_path, "  memory: 1GiB\n  zzz: " + "[" * 998 + "]" * 998 + "\n")
    assert problems(tmp_path) == ["d.yaml:6: nests more than 64 levels deep"]
    domain(tmp_path, "  memory: 1GiB\n  zzz:\n" + "".join("  " * (i + 2) + f"k{i}:\n" for i in range(58)))
    assert problems(tmp_path) == ["d.yaml:6: spec.zzz: unknown field"]  # below the limit: read


def test_the_line_finder_walks_any_depth_without_recursion():
    from reconciler.spec import yamltree

    node = yaml.compose("x: " + "[" * 998 + "1" + "]" * 998 + "\n", Loader=yamltree.Loader)
    lines = yamltree.record_lines(node, "f.yaml", [])
    assert lines[("x", *([0] * 998))] == 1


def billion_laughs(levels: int = 10, width: int = 9) -> str:
    text = 'a0: &a0 ["lol"]\n'
    for level in range(1, levels + 1):
        text += f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]\n"
    return text


def test_an_alias_bomb_fails_fast_naming_file_and_line(tmp_path):
    """10 levels of 9 aliases took 5 GB (and ignored SIGTERM)."""
    domain(tmp_path, "  memory: 1GiB\n")
    write(tmp_path, "bomb.yaml", billion_laughs())
    started = time.monotonic()
    found = problems(tmp_path)
    assert time.monotonic() - started < 5
    assert found == ["bomb.yaml:7: aliases expand this file past 1,000,000 YAML nodes"]


def test_an_alias_that_contains_itself_is_refused_and_others_still_work(tmp_path):
    domain(tmp_path, "  memory: 1GiB\n  zzz: &loop [1, *loop]\n")
    assert problems(tmp_path) == ["d.yaml:6: an alias refers to a node that contains it"]
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a, labels: &l {team: ops}}\n"
        "spec:\n  <<: &base {memory: 1GiB, vcpus: 2}\n  vcpus: 4\n  interfaces: [{network: &n default}]\n"
        "  disks: [{path: /img/a}]\n  machine: *n\n",
    )
    spec = load_manifests(tmp_path).domains["hv1"]["a"].spec
    assert (spec.vcpus, spec.memory, spec.machine) == (4, 1024**3, "default")


def test_a_file_larger_than_the_limit_is_refused_at_the_line_past_it(tmp_path):
    domain(tmp_path, "  memory: 1GiB\n")
    write(tmp_path, "big.yaml", "# padding\n" * (MIB // 10 + 1))
    [problem] = problems(tmp_path)
    assert problem.startswith(f"big.yaml:{MIB // 10 + 1}: the file is larger than 1 MiB")


def test_a_manifest_that_is_not_a_regular_file_is_refused(tmp_path):
    domain(tmp_path, "  memory: 1GiB\n")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    assert [str(p) for p in info.value.problems] == ["zero.yaml: not a regular file"]


# ------------------------------------------------------------------ encodings, tags, odd values


def test_bytes_that_are_not_utf8_are_reported_with_line_and_column(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    (tmp_path / "d.yaml").write_bytes(
        DOMAIN_HEAD.encode() + "spec: {memory: 1GiB, machine: é\xff}\n".encode("latin-1")
    )
    assert problems(tmp_path) == ["d.yaml:4: not UTF-8: byte 0xe9 at column 31 cannot be decoded"]


def test_a_character_yaml_refuses_is_reported_with_its_line(tmp_path):
    domain(tmp_path, "  memory: 1GiB\n  machine: q3\x015\n")
    assert problems(tmp_path) == [
        "d.yaml:6: YAML syntax error: character U+0001 is not allowed in YAML "
        "(control characters are not allowed)"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!binary aGVsbG8=", "d.yaml:6: YAML tag !!binary is not allowed in a manifest"),
        ("!!set {a, b}", "d.yaml:6: YAML tag !!set is not allowed in a manifest"),
        ("!!int abc", "d.yaml:6: cannot read the value 'abc'"),
        ("2020-13-45", "d.yaml:6: cannot read the value '2020-13-45'"),
        ("!!timestamp nonsense", "d.yaml:6: cannot read the value 'nonsense'"),
    ],
)
def test_values_pyyaml_cannot_or_should_not_construct_are_problems(tmp_path, value, message):
    """A timestamp in month 13 raised ValueError, ``!!timestamp nonsense`` AttributeError."""
    domain(tmp_path, f"  memory: 1GiB\n  machine: {value}\n")
    assert problems(tmp_path) == [message]


def test_a_date_where_a_string_belongs_says_to_quote_it(tmp_path):
    domain(tmp_path, "  memory: 1GiB\n  machine: 2020-01-02\n")
    assert problems(tmp_path) == [
        "d.yaml:6: spec.machine: expected a string, but YAML read 2020-01-02 as date: put it in quotes"
    ]


def test_complex_keys_are_problems_not_crashes(tmp_path):
    """A duplicate check on a list key raised TypeError (unhashable)."""
    domain(tmp_path, "  memory: 1GiB\n  ? [a]\n  : 1\n")
    [problem] = problems(tmp_path)
    assert problem.startswith("d.yaml:6: YAML syntax error: found unhashable key")


@pytest.mark.parametrize(
    "disk", ["{path: /a, target: [x]}", "{path: /a, bus: [x]}", "{path: /a, bus: {x: 1}}"]
)
def test_disk_fields_of_the_wrong_type_are_problems_not_crashes(tmp_path, disk):
    """Naming the disks hashed the target or bus as given: TypeError on a list."""
    domain(tmp_path, f"  memory: 1GiB\n  disks: [{disk}]\n")
    assert all(p.startswith("d.yaml:6: spec.disks[0].") for p in problems(tmp_path))
