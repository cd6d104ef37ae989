"""Host labels (Kubernetes syntax), the selectors that pick hosts by them, durations, the Host
fields built from both (``metadata.labels``, ``spec.timeouts``), and the keepalive a call timeout
turns into."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.adapters.libvirt.connections import keepalive_for
from reconciler.errors import ManifestError, SelectionError
from reconciler.files.content_cache import ContentCache
from reconciler.spec.durations import DURATION_PATTERN, format_duration, parse_duration
from reconciler.spec.labels import Requirement, Selector, label_key_problem, label_value_problem
from reconciler.spec.manifests import load_manifests
from tests.helpers import write

# ------------------------------------------------------------------------------------ label syntax

LONGEST_PREFIX = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters


@pytest.mark.parametrize(
    "key",
    [
        "role",
        "a",
        "A-b_c.d",
        "x" * 63,
        "example.com/role",
        "app.kubernetes.io/name",
        "a-b.c-d/e",
        f"{LONGEST_PREFIX}/k",
    ],
)
def test_label_keys_that_are_accepted(key: str):
    assert label_key_problem(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "",
        "-role",
        "role-",
        ".role",
        "x" * 64,
        "ro le",
        "ro=le",
        "/role",
        "example.com/",
        "Example.com/role",  # a prefix is a lower-case DNS name
        "a/b/c",
        "-a.com/role",
        f"{LONGEST_PREFIX}d/k",  # a prefix of 254 characters
        "rôle",
    ],
)
def test_label_keys_that_are_refused(key: str):
    problem = label_key_problem(key)
    assert problem is not None and repr(key) in problem


@pytest.mark.parametrize("value", ["", "web", "Web-01", "a.b_c", "9", "v" * 63])
def test_label_values_that_are_accepted(value: str):
    assert label_value_problem(value) is None


@pytest.mark.parametrize("value", ["v" * 64, "-web", "web.", "no spaces", "a/b", "a=b", "a,b", "ünï"])
def test_label_values_that_are_refused(value: str):
    problem = label_value_problem(value)
    assert problem is not None and repr(value) in problem


# --------------------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("texts", "requirements"),
    [
        (["a=b,c!=d"], [Requirement("a", "=", "b"), Requirement("c", "!=", "d")]),
        (["a==b"], [Requirement("a", "=", "b")]),
        (["k"], [Requirement("k", "exists")]),
        (["!k"], [Requirement("k", "!exists")]),
        (["k="], [Requirement("k", "=", "")]),
        ([" a = b , ! c "], [Requirement("a", "=", "b"), Requirement("c", "!exists")]),
        (
            ["a=b", "example.com/zone!=x"],
            [Requirement("a", "=", "b"), Requirement("example.com/zone", "!=", "x")],
        ),
    ],
)
def test_selectors_parse_into_requirements(texts: list[str], requirements: list[Requirement]):
    assert list(Selector.parse(texts).requirements) == requirements


@pytest.mark.parametrize(
    "text",
    [
        "",
        ",",
        "a=b,",
        "a=b,,c",
        "=b",
        "!=b",
        "!",
        "!!k",
        "!k=v",
        "a=b=c",
        "a!==b",
        "a in (b,c)",  # set-based requirements are not supported
        "a=-b",
        "-a=b",
        "a=" + "v" * 64,
    ],
)
def test_a_malformed_selector_is_a_value_error_naming_it(text: str):
    with pytest.raises(ValueError) as refused:
        Selector.parse(["role=web", text])
    assert f"selector {text!r}" in str(refused.value)


LABELS = {"role": "web", "zone": "a", "empty": ""}


@pytest.mark.parametrize(
    ("selector", "selected"),
    [
        ("role=web", True),
        ("role==web", True),
        ("role=db", False),
        ("role!=db", True),
        ("role!=web", False),
        ("gpu!=yes", True),  # != holds when the label is absent
        ("zone", True),
        ("gpu", False),
        ("!gpu", True),
        ("!zone", False),
        ("empty=", True),
        ("empty", True),
        ("missing=", False),
        ("role=web,zone=a", True),
        ("role=web,zone=b", False),
        ("Role=web", False),  # keys are case-sensitive
    ],
)
def test_selectors_match_labels(selector: str, selected: bool):
    assert Selector.parse([selector]).matches(LABELS) is selected


def test_every_given_selector_must_hold():
    assert Selector.parse(["role=web", "zone=a"]).matches(LABELS)
    assert not Selector.parse(["role=web", "zone=b"]).matches(LABELS)


def test_no_selector_selects_every_host_and_prints_back_normalised():
    assert not Selector() and Selector().matches({})
    selector = Selector.parse(["a==b, !c", "d!=e,f"])
    assert selector and str(selector) == "a=b,!c,d!=e,f"
    assert Selector.parse([str(selector)]) == selector


# --------------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("2.5m", 150.0),
        ("100ms", 0.1),
        ("7", 7.0),
    ],
)
def test_durations_parse_to_seconds(text: str, seconds: float):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        *["", "s", "ms", "0s", "0", "-1s", "1d", "1 s", " 1s", "1s "],
        *["1.5.2s", "nan", "inf", "1e999s", "10S", "1sec"],
    ],
)
def test_what_is_not_a_duration(text: str):
    with pytest.raises(ValueError, match="is not a duration such as"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        *[(0.5, "500ms"), (0.1, "100ms"), (1.0, "1s"), (10.0, "10s"), (1.5, "1.5s"), (60.0, "1m")],
        *[(90.0, "90s"), (3600.0, "1h"), (7200.0, "2h"), (5400.0, "90m"), (0.25, "250ms")],
    ],
)
def test_durations_format_as_the_shortest_exact_text(seconds: float, text: str):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        *["500ms", "10s", "1m", "1h", "1.5s", "2.25m", "3599s", "123ms", "12.5ms", "59m", "61m"],
        *["1234.5678s", "100.123456ms"],  # more than six significant digits
    ],
)
def test_formatting_a_parsed_duration_gives_it_back(text: str):
    seconds = parse_duration(text)
    formatted = format_duration(seconds)
    assert re.fullmatch(DURATION_PATTERN, formatted), formatted
    assert parse_duration(formatted) == seconds


# ------------------------------------------------------------------------------ the Host manifest


def host_document(metadata: str = "", spec: str = "") -> str:
    """A sandbox Host; ``metadata`` and ``spec`` are more lines (indented) of those sections."""
    return (
        "apiVersion: virt-reconcile/v1\n"
        "kind: Host\n"
        "metadata:\n"
        "  name: hv1\n"
        f"{metadata}"
        "spec:\n"
        "  uri: sandbox:state/hv1.xml\n"
        "  capacity: {cpus: 8, memory: 16GiB}\n"
        f"{spec}"
    )


def problems(root: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifests(root)
    return [str(problem) for problem in info.value.problems]


def test_labels_and_timeouts_are_read_from_a_host(tmp_path: Path):
    spec = "  timeouts: {connect: 500ms, call: 2m}\n"
    write(tmp_path, "h.yaml", host_document("  labels: {role: web, example.com/zone: a, empty: ''}\n", spec))
    host = load_manifests(tmp_path).hosts["hv1"]
    assert host.metadata.labels == {"role": "web", "example.com/zone": "a", "empty": ""}
    assert (host.spec.timeouts.connect, host.spec.timeouts.call) == (0.5, 120.0)


def test_timeouts_default_to_ten_seconds_to_connect_and_a_minute_per_call(tmp_path: Path):
    write(tmp_path, "h.yaml", host_document())
    timeouts = load_manifests(tmp_path).hosts["hv1"].spec.timeouts
    assert (timeouts.connect, timeouts.call) == (10.0, 60.0)


@pytest.mark.parametrize(
    ("metadata", "spec", "expected"),
    [
        ("  labels:\n    -role: web\n", "", "h.yaml:5: metadata.labels: label key '-role' is not a name"),
        ("  labels: {role: no spaces}\n", "", "h.yaml:5: metadata.labels: label value 'no spaces' is not"),
        ("", "  timeouts:\n    connect: 10\n", "h.yaml:9: spec.timeouts.connect: must be a duration string"),
        ("", "  timeouts:\n    call: 5d\n", "h.yaml:9: spec.timeouts.call: '5d' is not a duration"),
        ("", "  timeouts:\n    call: 2.5\n", "h.yaml:9: spec.timeouts.call: must be a duration string"),
        (
            "",
            "  timeouts: {connect: 50ms}\n",
            "h.yaml:8: spec.timeouts.connect: must be between 100ms and 1h, not 50ms",
        ),
        ("", "  timeouts: {call: 2h}\n", "h.yaml:8: spec.timeouts.call: must be between 1s and 1h, not 2h"),
        (
            "",
            "  timeouts: {conect: 1s}\n",
            "h.yaml:8: spec.timeouts.conect: unknown field; did you mean connect?",
        ),
    ],
)
def test_a_bad_label_or_duration_names_the_file_line_and_field(
    tmp_path: Path, metadata: str, spec: str, expected: str
):
    write(tmp_path, "h.yaml", host_document(metadata, spec))
    [problem] = problems(tmp_path)
    assert problem.startswith(expected), problem


def test_every_bad_label_and_duration_is_reported_at_once(tmp_path: Path):
    spec = "  timeouts:\n    connect: 10\n    call: forever\n"
    write(tmp_path, "h.yaml", host_document("  labels: {-a: x, b: -y}\n", spec))
    found = problems(tmp_path)
    fields = sorted(problem.split(": ")[1] for problem in found)
    assert fields == ["metadata.labels", "spec.timeouts.call", "spec.timeouts.connect"], found


@pytest.mark.parametrize("text", ["1e1s", "+5s", "1_0s", ".5s", "5.s", "\u0661\u0660s"])
def test_a_host_timeout_is_written_as_its_schema_says(tmp_path: Path, text: str):
    """The Host schema's pattern (what editors check) and the loader agree on what a duration is:
    ``1e1s``, ``+5s``, ``1_0s`` or Arabic-Indic digits pass ``float()`` but not the pattern."""
    assert not re.fullmatch(DURATION_PATTERN, text)
    write(tmp_path, "h.yaml", host_document(spec=f"  timeouts: {{connect: '{text}'}}\n"))
    [problem] = problems(tmp_path)
    assert problem.startswith("h.yaml:8: spec.timeouts.connect: "), problem


def test_a_host_loaded_from_the_parse_cache_keeps_its_exact_timeouts(tmp_path: Path):
    """The cache keeps each model as JSON (durations formatted): reading it back must give the
    same Host as parsing did, to the last digit."""
    manifests = tmp_path / "manifests"
    write(manifests, "h.yaml", host_document(spec="  timeouts: {connect: 100.123456ms, call: 1234.5678s}\n"))
    cache = ContentCache(tmp_path / "cache", "manifests")
    parsed = load_manifests(manifests, cache).hosts["hv1"]
    cached = load_manifests(manifests, cache).hosts["hv1"]
    assert cached.spec.timeouts == parsed.spec.timeouts
    assert cached == parsed


def test_hosts_are_selected_by_name_and_labels(tmp_path: Path):
    from reconciler.engine.reconcile import select_hosts

    documents = [
        host_document(f"  labels: {{role: {role}}}\n").replace("hv1", name)
        for name, role in (("hv1", "web"), ("hv2", "db"), ("hv3", "web"))
    ]
    write(tmp_path, "h.yaml", "---\n".join(documents))
    manifests = load_manifests(tmp_path)
    web = Selector.parse(["role=web"])
    assert select_hosts(manifests, None, web) == ["hv1", "hv3"]
    assert select_hosts(manifests, ["hv3", "hv2"], web) == ["hv3"]
    assert select_hosts(manifests, None, None) == ["hv1", "hv2", "hv3"]
    with pytest.raises(SelectionError, match=r"no host matches the selector 'role=web' among the hosts hv2"):
        select_hosts(manifests, ["hv2"], web)
    with pytest.raises(SelectionError, match="no host matches the selector 'gpu'"):
        select_hosts(manifests, None, Selector.parse(["gpu"]))
    with pytest.raises(SelectionError, match="unknown host 'hv9'"):
        select_hosts(manifests, ["hv9"], web)


# ------------------------------------------------------------------------------------- keepalive


def test_keepalive_gives_up_close_to_the_call_timeout():
    """libvirt declares a peer dead after ``interval * (count + 1)`` seconds without an answer: never
    later than the call timeout (2 s at least), never much sooner, pinging at most once a second."""
    for call in [*range(1, 3601), 1.5, 2.4, 2.6, 59.9]:
        interval, count = keepalive_for(float(call))
        silence = interval * (count + 1)
        assert interval >= 1 and count >= 1, (call, interval, count)
        assert 0.7 * call <= silence <= max(2, round(call)), (call, interval, count)


def test_keepalive_is_exact_for_round_timeouts():
    assert keepalive_for(60.0) == (10, 5)
    assert keepalive_for(6.0) == (1, 5)
    assert keepalive_for(3600.0) == (600, 5)
    assert keepalive_for(0.2) == (1, 1)  # never under a 1 s interval, never 0 pings
