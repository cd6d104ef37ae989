import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.spec.sizes import format_size, parse_libvirt_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1KiB", 1024),
        ("1Ki", 1024),
        ("512MiB", 512 * 1024**2),
        ("4GiB", 4 * 1024**3),
        ("4Gi", 4 * 1024**3),
        ("1TiB", 1024**4),
        ("2 GiB", 2 * 1024**3),
        ("1.5GiB", 1536 * 1024**2),
        ("1KB", 1024),  # 1000 bytes rounds up to a whole KiB, as libvirt does
        ("1MB", 977 * 1024),
        ("1GB", 976563 * 1024),
    ],
)
def test_parse_size_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bare", [4096, 4.5, "4096", "4 gigs", "", "GiB", "-1GiB", "4gib"])
def test_parse_size_refuses_bare_numbers_and_unknown_units(bare):
    with pytest.raises(ValueError):
        parse_size(bare)


def test_bare_number_message_suggests_units():
    with pytest.raises(ValueError, match=r"ambiguous.*'4096MiB'"):
        parse_size(4096)


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [
        ("1048576", None, 1024**3),
        ("1048576", "KiB", 1024**3),
        ("1", "G", 1024**3),
        ("1024", "b", 1024),
        ("1000", "bytes", 1024),
        ("2", "GB", 1953125 * 1024),
        ("4", "mib", 4 * 1024**2),
    ],
)
def test_parse_libvirt_size(text, unit, expected):
    assert parse_libvirt_size(text, unit) == expected


def test_parse_libvirt_size_unknown_unit():
    with pytest.raises(ValueError, match="unknown memory unit"):
        parse_libvirt_size("1", "parsecs")


@given(st.integers(min_value=1, max_value=2**40))
def test_format_then_parse_round_trips(kib):
    assert parse_size(format_size(kib * 1024)) == kib * 1024
