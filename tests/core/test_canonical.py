"""JCS (RFC 8785): the protocol §3.1 golden example and the RFC's own test values."""

from __future__ import annotations

import struct

import pytest

from nixfleet.core.canonical import canonical_bytes, canonicalize, load_json, sha256_hex
from nixfleet.core.errors import ParseError


def test_protocol_golden_example() -> None:
    raw = b'{"b":2,"a":{"z":null,"y":true,"x":[3,1,2]},"schemaVersion":1}'
    assert canonicalize(raw) == b'{"a":{"x":[3,1,2],"y":true,"z":null},"b":2,"schemaVersion":1}'


def test_numeric_string_keys_sort_as_strings() -> None:
    assert canonicalize(b'{"2":0,"10":0,"1":0}') == b'{"1":0,"10":0,"2":0}'


def test_whitespace_removed_array_order_kept() -> None:
    raw = b'{ "a" : [ 3 , 1 , { "d" : 1 , "c" : 2 } ] ,\n\t"b" : { } }'
    assert canonicalize(raw) == b'{"a":[3,1,{"c":2,"d":1}],"b":{}}'


def test_rfc8785_sorting_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33.
    raw = (
        b'{"\\u20ac":"Euro Sign","\\r":"Carriage Return","\\ufb33":"Hebrew Letter Dalet With '
        b'Dagesh","1":"One","\\ud83d\\ude00":"Emoji: Grinning Face","\\u0080":"Control",'
        b'"\\u00f6":"Latin Small Letter O With Diaeresis"}'
    )
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    ).encode("utf-8")
    assert canonicalize(raw) == expected


@pytest.mark.parametrize(
    ("text", "jcs"),
    [
        ("1e30", "1e+30"),
        ("4.50", "4.5"),
        ("2e-3", "0.002"),
        ("0.000001", "0.000001"),
        ("1e-7", "1e-7"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("333333333.33333329", "333333333.3333333"),
        ("1E+21", "1e+21"),
        ("1e20", "100000000000000000000"),
        ("100", "100"),
        ("0.1", "0.1"),
        ("-1.5e-7", "-1.5e-7"),
        ("1.0", "1"),
    ],
)
def test_number_serialization(text: str, jcs: str) -> None:
    assert canonicalize(text.encode()) == jcs.encode()


# RFC 8785 Appendix B: IEEE 754 bit patterns and their JCS form.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "jcs"), APPENDIX_B)
def test_rfc8785_appendix_b(bits: str, jcs: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert canonical_bytes(value) == jcs.encode()


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_nan_and_infinity_cannot_be_canonicalized(bits: str) -> None:
    with pytest.raises(ParseError, match="cannot canonicalize"):
        canonical_bytes(struct.unpack(">d", bytes.fromhex(bits))[0])


@pytest.mark.parametrize(
    ("raw", "jcs"),
    [
        (b'"\\u20ac"', '"€"'.encode()),  # non-ASCII kept as UTF-8
        (b'"\\u000f"', b'"\\u000f"'),  # other C0 controls: \u00xx, lower-case hex
        (b'"\\u001F"', b'"\\u001f"'),
        (b'"\\/"', b'"/"'),  # "/" is not escaped
        (b'"\\b\\t\\n\\f\\r"', b'"\\b\\t\\n\\f\\r"'),  # the five short escapes
        (b'"\\u0008\\u0009\\u000a\\u000c\\u000d"', b'"\\b\\t\\n\\f\\r"'),
        (b'"\\"\\\\"', b'"\\"\\\\"'),
        (b'"\\u0000\\u0001"', b'"\\u0000\\u0001"'),
        (b'"\\u007f"', b'"\x7f"'),  # DEL is not a C0 control: emitted raw
        (b'"\\u00e9"', '"é"'.encode()),
        (b'"\\ud83d\\ude00"', '"\U0001f600"'.encode()),
        (b'"A\\u0041"', b'"AA"'),
    ],
)
def test_string_escaping(raw: bytes, jcs: bytes) -> None:
    assert canonicalize(raw) == jcs


def test_rfc8785_section_3_2_2_example() -> None:
    raw = (
        b'{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        b' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        b' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ).encode()
    assert canonicalize(raw) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff", "not UTF-8"),
        (b"{", "not JSON"),
        (b'{"a":1,"a":1}', "duplicate key"),
        (b"[NaN]", "non-finite number NaN"),
        (b"9007199254740993", "cannot canonicalize"),  # beyond the I-JSON safe range
    ],
)
def test_bad_input_is_parse_error(raw: bytes, problem: str) -> None:
    with pytest.raises(ParseError, match=problem):
        canonicalize(raw, source="x.json")


def test_sha256_hex_of_jcs() -> None:
    assert sha256_hex(canonicalize(b'{"b":1, "a":2}')) == sha256_hex(b'{"a":2,"b":1}')
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_load_json_keeps_integers_as_int() -> None:
    assert load_json(b'{"n": 1}') == {"n": 1}
    assert type(load_json(b"1")) is int
