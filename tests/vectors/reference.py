#!/usr/bin/env python3
"""An independent implementation of ciphertext format v1, written from docs/FORMAT.md alone.

    reference.py check      open every vector in v1.json (suite 1) and v1_suite2.json (suite 2)
                            and re-seal it with its nonce,
                            recompute every blind index in blind_index_v1.json and every
                            compound index in compound_index_v1.json, and check that
                            every vector of v1_invalid.json fails with its error, and recover
                            the keys of keytable_v1.json from its KEK (CI runs this)
    reference.py normalizers FILE   compare a corpus of the Rust normalizers' outputs (the
                            Rust test `normalizers_agree_with_the_reference` writes and runs it)
    reference.py generate-unicode   regenerate encrypted-types/src/index/unicode.rs
    reference.py generate-keytable  write keytable_v1.json (docs/KEYTABLE.md; frozen once committed)
    reference.py generate-keytable-mac2  write keytable_v1_mac2.json (version 2 record MACs; frozen)
    reference.py generate-kek-check  write kek_check_v1.json (local KEK check values; frozen)
    reference.py generate-keytable-invalid  write keytable_v1_invalid.json (refused tables; frozen)
    reference.py generate-json-depth  write v1_json_depth.json (JSON 127 deep; frozen)
    reference.py generate   write the vector files from the cases below (only when adding vectors:
                            existing vectors are frozen and must never change)

Needs the `cryptography` package.
"""
import json
import re
import struct
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

DOMAIN = b"encrypted-types/v1"
HERE = Path(__file__).resolve().parent
VECTORS = HERE / "v1.json"
SUITE2_VECTORS = HERE / "v1_suite2.json"
SUITE3_VECTORS = HERE / "v1_suite3.json"
SCHEMA_VECTORS = HERE / "v1_schema.json"
# FORMAT.md section 4.1: the suites, by their header byte. Suite 3 is suite 2 with the row's
# identity appended to the AAD (section 2.1); suites 4 and 5 are suites 2 and 3 with the
# table's schema in the context (section 2.2).
SUITES = {1: AESGCM, 2: AESGCMSIV, 3: AESGCMSIV, 4: AESGCMSIV, 5: AESGCMSIV}
BOUND, SCHEMA = (3, 5), (4, 5)


def row_binding(parts) -> bytes:
    """Section 2.1: count, then per part tag (1 int, 2 text, 3 bytes), u32 length, bytes."""
    assert 1 <= len(parts) <= 4
    out = bytes([len(parts)])
    for part in parts:
        ((kind, value),) = part.items()
        if kind == "int":
            raw, tag = struct.pack(">q", value), 1
        elif kind == "text":
            raw, tag = value.encode("utf-8"), 2
        elif kind == "bytes":
            raw, tag = bytes.fromhex(value), 3
        else:
            raise ValueError(kind)
        out += bytes([tag]) + struct.pack(">I", len(raw)) + raw
    return out
INDEX_VECTORS = HERE / "blind_index_v1.json"


def s(text: str) -> bytes:
    raw = text.encode("utf-8")
    assert len(raw) <= 0xFFFF
    return struct.pack(">H", len(raw)) + raw


def aad(header6: bytes, table: str, column: str, tenant, value_type: str, schema=None) -> bytes:
    t = b"\x00" if tenant is None else b"\x01" + s(tenant)
    tail = b"" if schema is None else s(schema)
    return DOMAIN + header6 + s(table) + s(column) + t + s(value_type) + tail


def seal(key: bytes, key_id: int, nonce: bytes, ctx: dict, plaintext: bytes, suite: int = 1,
         row=None) -> bytes:
    assert (suite in BOUND) == (row is not None)
    assert (suite in SCHEMA) == (ctx.get("schema") is not None)
    header6 = bytes([1, suite]) + struct.pack(">I", key_id)
    extra = row_binding(row) if row is not None else b""
    ct_tag = SUITES[suite](key).encrypt(nonce, plaintext, aad(header6, **ctx) + extra)
    return header6 + nonce + ct_tag


class Invalid(Exception):
    """An opening error of FORMAT.md section 5, named as the Rust `Error` variant."""


def open_(keys: dict, ctx: dict, sealed: bytes, destroyed=frozenset(), row=None) -> bytes:
    """Section 5 steps 1-6: the plaintext bytes. `keys` maps key id to (key, tenant); `row` is
    the row identity of a column whose values are bound to their row, else None."""
    if not sealed:
        raise Invalid("Truncated")
    if sealed[0] != 1:
        raise Invalid("UnsupportedVersion")
    if len(sealed) < 34:
        raise Invalid("Truncated")
    if len(sealed) > (1 << 30) + 34:
        raise Invalid("TooLarge")
    if sealed[1] not in SUITES:
        raise Invalid("UnsupportedSuite")
    (key_id,) = struct.unpack(">I", sealed[2:6])
    if key_id in destroyed:
        raise Invalid("KeyDestroyed")
    if key_id not in keys:
        raise Invalid("UnknownKeyId")
    key, key_tenant = keys[key_id]
    # Step 6: a bound value opens only with its row; a bound column takes no unbound value.
    if (sealed[1] in BOUND) != (row is not None):
        raise Invalid("RowBinding")
    # A column with no schema reads no suite 4 or 5; one with a schema no value without it.
    if sealed[1] in SCHEMA and ctx.get("schema") is None:
        raise Invalid("UnsupportedSuite")
    if sealed[1] not in SCHEMA and ctx.get("schema") is not None:
        raise Invalid("SchemaMismatch")
    extra = row_binding(row) if row is not None else b""
    try:
        return SUITES[sealed[1]](key).decrypt(sealed[6:18], sealed[18:],
                                              aad(sealed[:6], **dict(ctx, tenant=key_tenant)) + extra)
    except InvalidTag:
        raise Invalid("AuthenticationFailed") from None


def open_row(keys: dict, destroyed, table, column, value_type, row_tenant, sealed: bytes, row=None):
    """Sections 5 and 5.1: open, decode, then check the key's tenant against the row's."""
    ctx = dict(table=table, column=column, value_type=value_type)
    plaintext = open_(keys, ctx, sealed, destroyed, row)
    value = decode(value_type, plaintext)
    (key_id,) = struct.unpack(">I", sealed[2:6])
    if keys[key_id][1] != row_tenant:
        raise Invalid("TenantMismatch")
    return value


DAY_MIN, DAY_MAX = -96465292, 95026236  # -262143-01-01 and 262142-12-31
JSON_MAX_DEPTH = 127


def decode(value_type: str, p: bytes):
    """Section 3: the one accepted encoding of each type; anything else is InvalidPlaintext."""
    def need(ok):
        if not ok:
            raise Invalid("InvalidPlaintext")
    if value_type == "string":
        try:
            return p.decode("utf-8")  # strict: no surrogates, no overlong forms
        except UnicodeDecodeError:
            raise Invalid("InvalidPlaintext") from None
    if value_type == "bytes":
        return p
    if value_type == "bool":
        need(p in (b"\x00", b"\x01"))
        return p == b"\x01"
    if value_type in ("i16", "i32", "i64"):
        need(len(p) == int(value_type[1:]) // 8)
        return int.from_bytes(p, "big", signed=True)
    if value_type == "f64":
        need(len(p) == 8)
        return p
    if value_type == "date":
        need(len(p) == 4)
        (days,) = struct.unpack(">i", p)
        need(DAY_MIN <= days <= DAY_MAX)
        return days
    if value_type in ("timestamp", "timestamptz"):
        need(len(p) == 12)
        secs, nanos = struct.unpack(">qI", p)
        need(DAY_MIN * 86400 <= secs <= DAY_MAX * 86400 + 86399)
        need(nanos < 10**9 or (nanos < 2 * 10**9 and secs % 60 == 59))  # floor modulo
        return [secs, nanos]
    if value_type == "uuid":
        need(len(p) == 16)
        return p.hex()
    if value_type == "json":
        return decode_json(p)
    raise ValueError(value_type)


def decode_json(p: bytes):
    """Section 3.1: RFC 8259 JSON text in UTF-8, with no duplicate object keys, no lone
    surrogates, finite numbers only, and arrays and objects nested at most 127 deep."""
    def bad(*_):
        raise Invalid("InvalidPlaintext")

    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            bad()
        return dict(items)

    def number(text):
        f = float(text)
        if f in (float("inf"), float("-inf")):
            bad()
        return f

    def integer(text):
        # An integer beyond i64/u64 is read as a binary64: it too must be finite.
        v = int(text)
        if abs(v) > sys.float_info.max:
            bad()
        return v

    def check(v, depth):
        if isinstance(v, str):
            v.encode("utf-8")  # a lone surrogate from a \u escape fails here
        elif isinstance(v, (list, dict)):
            if depth >= JSON_MAX_DEPTH:
                bad()
            for item in (v.items() if isinstance(v, dict) else v):
                for part in (item if isinstance(v, dict) else (item,)):
                    check(part, depth + 1)
    try:
        text = p.decode("utf-8")
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=bad, parse_float=number,
                           parse_int=integer)
        check(value, 0)
        return value
    except (UnicodeError, ValueError, RecursionError):
        raise Invalid("InvalidPlaintext") from None


def encode(value_type: str, value) -> bytes:
    """Plaintext encodings of FORMAT.md section 3, from a JSON-friendly description."""
    if value_type == "string":
        return value.encode("utf-8")
    if value_type == "bytes":
        return bytes.fromhex(value)
    if value_type == "bool":
        return b"\x01" if value else b"\x00"
    if value_type in ("i16", "i32", "i64"):
        return int(value).to_bytes(int(value_type[1:]) // 8, "big", signed=True)
    if value_type == "f64":  # given as the hex of the bit pattern, to carry NaN and -0.0
        return bytes.fromhex(value)
    if value_type == "date":  # days since 1970-01-01
        return struct.pack(">i", value)
    if value_type in ("timestamp", "timestamptz"):  # [seconds, nanoseconds]
        return struct.pack(">qI", value[0], value[1])
    if value_type == "uuid":
        return bytes.fromhex(value.replace("-", ""))
    if value_type == "json":
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    raise ValueError(value_type)


def nested(depth: int):
    """`depth` arrays, one inside the other, around 1: `[[1]]` is depth 2."""
    v = 1
    for _ in range(depth):
        v = [v]
    return v


KEY_A = bytes(range(32))
KEY_B = bytes(range(0xE0, 0x100))
CASES = [
    # name, key, key id, nonce byte, table, column, tenant, value type, value
    ("string-ascii", KEY_A, 1, 0x01, "patients", "email", None, "string", "ann@example.org"),
    ("string-empty", KEY_A, 1, 0x02, "patients", "email", None, "string", ""),
    ("string-non-ascii", KEY_A, 1, 0x03, "patients", "name", None, "string", "Zoë Ångström 患者 🩺"),
    ("string-tenant", KEY_B, 0xA1B2C3D4, 0x04, "patients", "ssn", "clinic-a", "string", "123-45-6789"),
    ("string-unbound", KEY_A, 1, 0x05, "", "", None, "string", "no column"),
    ("bytes", KEY_A, 7, 0x06, "docs", "scan", None, "bytes", "00ff10ee"),
    ("bool-true", KEY_A, 1, 0x07, "patients", "consent", None, "bool", True),
    ("i16-min", KEY_A, 1, 0x08, "t", "c", None, "i16", -32768),
    ("i32-max", KEY_A, 1, 0x09, "t", "c", None, "i32", 2147483647),
    ("i64-min", KEY_A, 1, 0x0A, "t", "c", "42", "i64", -9223372036854775808),
    ("f64-negative-zero", KEY_A, 1, 0x0B, "t", "c", None, "f64", "8000000000000000"),
    ("f64-nan-payload", KEY_A, 1, 0x0C, "t", "c", None, "f64", "7ff8000000000001"),
    ("date", KEY_A, 1, 0x0D, "patients", "dob", None, "date", -3653),
    ("timestamp", KEY_A, 1, 0x0E, "visits", "at", None, "timestamp", [-1, 999999999]),
    ("timestamptz", KEY_A, 1, 0x0F, "visits", "at", None, "timestamptz", [1700000000, 123456789]),
    ("uuid", KEY_A, 1, 0x10, "t", "c", None, "uuid", "67e55044-10b1-426f-9247-bb680e5fe0c8"),
    ("json", KEY_A, 1, 0x11, "patients", "allergies", "clinic-b", "json",
     {"severe": True, "substance": "penicillin", "notes": ["rash", 2]}),
    # Appended (issue 29): the exact bounds, which only rejections tested before.
    ("timestamp-leap-second-last-nanosecond", KEY_A, 1, 0x12, "visits", "at", None, "timestamp", [59, 1999999999]),
    ("timestamp-leap-second-before-epoch", KEY_A, 1, 0x13, "visits", "at", None, "timestamptz", [-1, 1000000000]),
    ("timestamp-min", KEY_A, 1, 0x14, "visits", "at", None, "timestamp", [-96465292 * 86400, 0]),
    ("timestamp-max", KEY_A, 1, 0x15, "visits", "at", None, "timestamp", [95026236 * 86400 + 86399, 999999999]),
    ("date-min", KEY_A, 1, 0x16, "patients", "dob", None, "date", -96465292),
    ("date-max", KEY_A, 1, 0x17, "patients", "dob", None, "date", 95026236),
    ("tenant-integer", KEY_B, 0xA1B2C3D4, 0x19, "patients", "ssn", "42", "string", "123-45-6789"),
    ("tenant-negative-integer", KEY_B, 0xA1B2C3D4, 0x1A, "patients", "ssn", "-7", "i64", -7),
]


# Suite 3: values bound to their row, by the kinds of row identity the derive supports.
ROW_CASES = [
    # name, key, key id, nonce byte, table, column, tenant, value type, value, row identity
    ("row-int-id", KEY_A, 1, 0x31, "patients", "ssn", None, "string", "123-45-6789", [{"int": 7}]),
    ("row-negative-int", KEY_A, 1, 0x32, "patients", "ssn", None, "string", "x", [{"int": -1}]),
    ("row-uuid", KEY_A, 1, 0x33, "patients", "notes", None, "string", "penicillin",
     [{"bytes": "67e5504410b1426f9247bb680e5fe0c8"}]),
    ("row-text-key", KEY_B, 0xA1B2C3D4, 0x34, "visits", "code", "clinic-a", "string", "Z00.0",
     [{"text": "V-2026-0001"}]),
    ("row-composite", KEY_B, 0xA1B2C3D4, 0x35, "visits", "code", "clinic-a", "i64", 42,
     [{"int": 1}, {"text": "p-9"}]),
    ("row-four-parts", KEY_A, 1, 0x36, "t", "c", "42", "bytes", "00ff",
     [{"int": 0}, {"text": ""}, {"bytes": ""}, {"text": "Zoë"}]),
]


# --- Blind indexes (FORMAT.md section 7) ---------------------------------------------------

import hashlib
import hmac
import unicodedata

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


# FORMAT.md section 7.1: the normalizers, written from the spec's words. Python's `unicodedata`
# and `str` methods are its own (C tables), not the Rust crates the library uses.
UNICODE_VERSION = "14.0.0"
UNICODE_TABLE = HERE.parent.parent / "encrypted-types" / "src" / "index" / "unicode.rs"
# The White_Space property: exactly these 25 code points (not U+001C..U+001F, U+180E, U+200B).
WHITE_SPACE = frozenset(map(chr, [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680,
                                  *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]))
ASCII_DIGITS = frozenset("0123456789")


def unassigned_ranges_from_ucd():
    """Code points whose General_Category is Cn in this Python's Unicode database."""
    ranges, start = [], None
    for cp in range(0x110000):
        cn = unicodedata.category(chr(cp)) == "Cn"
        if cn and start is None:
            start = cp
        elif not cn and start is not None:
            ranges.append((start, cp - 1))
            start = None
    if start is not None:
        ranges.append((start, 0x10FFFF))
    return ranges


UNASSIGNED_FILE = HERE / "unassigned_14.0.0.txt"


def unassigned_ranges_from_file():
    """The normative list (FORMAT.md section 7.1): `XXXX..YYYY` or `XXXX` per line, `#` comments."""
    out = []
    for line in UNASSIGNED_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            a, _, b = line.partition("..")
            out.append((int(a, 16), int(b or a, 16)))
    return out


def unassigned_ranges_from_table():
    import re
    text = UNICODE_TABLE.read_text()
    return [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\(0x([0-9A-F]+), 0x([0-9A-F]+)\)", text)]


def _unassigned():
    import bisect
    ranges = unassigned_ranges_from_file()
    starts = [a for a, _ in ranges]

    def test(ch: str) -> bool:
        cp = ord(ch)
        i = bisect.bisect_right(starts, cp) - 1
        return i >= 0 and ranges[i][0] <= cp <= ranges[i][1]
    return test


UNASSIGNED = None


def runs(text: str, step, keep_unassigned: bool) -> str:
    """Applies `step` to each maximal run of code points assigned in Unicode 14.0.0; a code point
    unassigned there is a boundary, copied unchanged (or dropped, for `digits`)."""
    global UNASSIGNED
    if UNASSIGNED is None:
        UNASSIGNED = _unassigned()
    out, run = [], []
    for ch in text:
        if UNASSIGNED(ch):
            if run:
                out.append(step("".join(run)))
                run = []
            if keep_unassigned:
                out.append(ch)
        else:
            run.append(ch)
    if run:
        out.append(step("".join(run)))
    return "".join(out)


# FORMAT.md section 7.1: Final_Sigma reads Cased and Case_Ignorable. Unicode after 14.0 made U+0295
# LATIN LETTER PHARYNGEAL VOICED FRICATIVE a Lo (no longer Cased); the spec takes that value
# (the library's Rust toolchain has it) and 14.0.0's for every other code point.
NOT_CASED = frozenset("\u0295")


def _final(c: str) -> bool:
    """Whether a Σ right after `c` is final, by Python's own 14.0.0 Final_Sigma."""
    return (c + "\u03a3").lower()[-1] == "\u03c2"


def _cased(c: str) -> bool:
    return c not in NOT_CASED and _final(c)


def _case_ignorable(c: str) -> bool:
    return not _final(c) and ("a" + c + "\u03a3").lower()[-1] == "\u03c2"


def lowercase(run: str) -> str:
    """Full lowercase mapping with Final_Sigma, each code point on its own but Σ (section 7.1)."""
    out = []
    for i, c in enumerate(run):
        if c != "\u03a3":
            out.append(c.lower())
            continue
        before = next((x for x in reversed(run[:i]) if not _case_ignorable(x)), None)
        after = next((x for x in run[i + 1:] if not _case_ignorable(x)), None)
        final = before is not None and _cased(before) and (after is None or not _cased(after))
        out.append("\u03c2" if final else "\u03c3")
    return "".join(out)


def trim(text: str) -> str:
    start, end = 0, len(text)
    while start < end and text[start] in WHITE_SPACE:
        start += 1
    while end > start and text[end - 1] in WHITE_SPACE:
        end -= 1
    return text[start:end]


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def normalize(steps, text: str) -> str:
    for step in steps:
        if step == "trim":
            text = trim(text)
        elif step == "lowercase":  # full lowercase mapping, Final_Sigma, no language tailoring
            text = runs(text, lowercase, True)
        elif step == "email":
            text = runs(trim(text), lowercase, True)
        elif step == "digits":
            text = runs(text, lambda r: "".join(c for c in nfkc(r) if c in ASCII_DIGITS), False)
        elif step == "casefold":  # NFKC, then full default case folding (C + F), once
            text = runs(text, lambda r: nfkc(r).casefold(), True)
        elif step == "last4":  # `digits`, then its last four code points (all, if fewer)
            text = normalize(["digits"], text)[-4:]
        elif step.startswith("prefix("):  # the first n code points (scalar values), all if fewer
            text = text[:prefix_length(step)]
        else:
            raise ValueError(step)
    return text


PREFIX = re.compile(r"prefix\(([1-9][0-9]{0,4})\)")


def prefix_length(step: str) -> int:
    """`prefix(n)`, 1 <= n <= 65535, n in shortest decimal (no leading zeros, no sign)."""
    m = PREFIX.fullmatch(step)
    if m is None or int(m.group(1)) > 0xFFFF:
        raise ValueError(step)
    return int(m.group(1))


def generate_unicode():
    """Writes the Rust table of code points unassigned in Unicode 14.0.0 (needs Python 3.11,
    whose unicodedata is 14.0.0)."""
    assert unicodedata.unidata_version == UNICODE_VERSION, unicodedata.unidata_version
    ranges = unassigned_ranges_from_ucd()
    lines = [
        "//! Code points unassigned (General_Category Cn) in Unicode 14.0.0, the version the",
        "//! normalizers are pinned to (docs/FORMAT.md section 7.1). Generated by",
        "//! `python3 tests/vectors/reference.py generate-unicode` from Python 3.11's unicodedata;",
        "//! `reference.py check` regenerates and compares it. Do not edit.",
        "",
        "/// Inclusive ranges, sorted, disjoint.",
        f"pub(crate) static UNASSIGNED: [(u32, u32); {len(ranges)}] = [",
    ]
    lines += [f"    (0x{a:04X}, 0x{b:04X})," for a, b in ranges]
    lines += ["];", ""]
    # Keep the hand-written test module at the end of the file.
    old = UNICODE_TABLE.read_text()
    tail = old[old.index("\n// Not written by the generator"):] if "// Not written by the generator" in old else ""
    UNICODE_TABLE.write_text("\n".join(lines) + tail)
    print(f"wrote {len(ranges)} ranges to {UNICODE_TABLE}")
    data = ["# Code points unassigned (General_Category Cn, noncharacters included) in Unicode 14.0.0:",
            "# the normative list of docs/FORMAT.md section 7.1, one range per line, inclusive, in",
            "# the UCD's notation. Generated from Python 3.11's unicodedata (14.0.0) by",
            "# `reference.py generate-unicode`; the library's table (encrypted-types/src/index/unicode.rs)",
            "# is checked against it by Rust and by `reference.py check`.", ""]
    data += [f"{a:04X}..{b:04X}" if a != b else f"{a:04X}" for a, b in ranges]
    UNASSIGNED_FILE.write_text("\n".join(data) + "\n")
    print(f"wrote {len(ranges)} ranges to {UNASSIGNED_FILE}")


def check_unicode():
    """The library's table is the normative file, and the file what the Unicode 14.0.0 database
    says, where this Python has it."""
    assert unassigned_ranges_from_table() == unassigned_ranges_from_file(), "unicode.rs differs from the file"
    if unicodedata.unidata_version != UNICODE_VERSION:
        print(f"(Python's Unicode is {unicodedata.unidata_version}: the 14.0.0 table is taken as committed)")
        return
    assert unassigned_ranges_from_table() == unassigned_ranges_from_ucd(), "unicode.rs differs from UCD 14.0.0"


def blind_index(root: bytes, table, column, tenant, value_type, version, bits, steps, value) -> bytes:
    t = b"\x00" if tenant is None else b"\x01" + s(tenant)
    info = b"encrypted-types/blind-index/v1" + s(table) + s(column) + t + s(value_type) + struct.pack(">I", version)
    info += struct.pack(">H", bits) + bytes([len(steps)]) + b"".join(bytes([len(n)]) + n.encode() for n in steps)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root)
    data = normalize(steps, value).encode() if value_type == "string" else encode(value_type, value)
    return truncate(hmac.new(key, data, hashlib.sha256).digest(), bits)


def truncate(full: bytes, bits: int) -> bytes:
    """Section 7: the first ceil(bits/8) bytes, the unused low-order bits of the last cleared."""
    assert 1 <= bits <= 256, bits
    n = (bits + 7) // 8
    out = bytearray(full[:n])
    out[-1] &= (0xFF << (n * 8 - bits)) & 0xFF
    return bytes(out)


ROOT = bytes(range(0x40, 0x60))
INDEX_CASES = [
    # name, table, column, tenant, value type, version, bits, normalizers, value
    ("email", "patients", "email", None, "string", 1, 256, ["email"], "  Ann@Example.ORG "),
    ("email-tenant", "patients", "email", "7", "string", 1, 256, ["email"], "ann@example.org"),
    ("ssn-digits-16-bits", "patients", "ssn", "7", "string", 1, 16, ["digits"], "123-45-6789"),
    ("phone-12-bits-v2", "patients", "phone", None, "string", 2, 12, ["digits"], "+1 (555) 010-9999"),
    ("digits-full-width", "patients", "phone", None, "string", 1, 256, ["digits"], "５５５-０１０"),
    ("casefold", "people", "surname", None, "string", 1, 256, ["trim", "casefold"], " STRASSE "),
    ("no-normalizer", "people", "code", None, "string", 1, 256, [], "Exact Value"),
    ("i64", "accounts", "number", "clinic-a", "i64", 1, 64, [], 1234567890123),
    # FORMAT.md section 7.1: inputs that separate one normalizer definition from another.
    ("casefold-sharp-s", "people", "surname", None, "string", 1, 256, ["casefold"], "Straße"),
    ("casefold-capital-sharp-s", "people", "surname", None, "string", 1, 256, ["casefold"], "STRAẞE"),
    ("lowercase-capital-sharp-s", "people", "surname", None, "string", 1, 256, ["lowercase"], "STRAẞE"),
    ("lowercase-final-sigma", "people", "surname", None, "string", 1, 256, ["lowercase"], "ΣΑΣ ΣΑΣ."),
    ("casefold-final-sigma", "people", "surname", None, "string", 1, 256, ["casefold"], "ΣΑΣ"),
    ("lowercase-dotted-capital-i", "people", "surname", None, "string", 1, 256, ["lowercase"], "İSTANBUL"),
    ("casefold-dotted-capital-i", "people", "surname", None, "string", 1, 256, ["casefold"], "İstanbul"),
    ("casefold-dotless-i", "people", "surname", None, "string", 1, 256, ["casefold"], "ıspanak"),
    ("casefold-fi-ligature", "people", "surname", None, "string", 1, 256, ["casefold"], "ﬁnn"),
    ("lowercase-fi-ligature", "people", "surname", None, "string", 1, 256, ["lowercase"], "ﬁnn"),
    ("trim-keeps-information-separator", "people", "code", None, "string", 1, 256, ["trim"], "\x1c a \x1c"),
    ("trim-keeps-mongolian-vowel-separator", "people", "code", None, "string", 1, 256, ["trim"], "\u180e a\u200b"),
    ("trim-all-white-space", "people", "code", None, "string", 1, 256, ["trim"],
     "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000a\u3000"),
    ("digits-arabic-indic", "patients", "phone", None, "string", 1, 256, ["digits"], "٥٥٥-١٢٣ 42"),
    ("digits-full-width", "patients", "phone", None, "string", 1, 256, ["digits"], "０１２３４５６７８９"),
    ("digits-superscript", "patients", "phone", None, "string", 1, 256, ["digits"], "x²³"),
    # Garay (added in Unicode 16.0) is unassigned in 14.0.0: copied, never case-mapped.
    ("lowercase-unassigned-in-14", "people", "surname", None, "string", 1, 256, ["lowercase"],
     "A\U00010d50B\u03a3"),
    ("casefold-unassigned-in-14", "people", "surname", None, "string", 1, 256, ["casefold"],
     "\u03a3\U00010d50\u03a3"),
    ("digits-unassigned-in-14", "patients", "phone", None, "string", 1, 256, ["digits"], "1\U00010d401"),
    # `last4` and `prefix(n)` (section 7.1).
    ("ssn-last4", "patients", "ssn", None, "string", 1, 256, ["last4"], "123-45-6789"),
    ("ssn-last4-16-bits", "patients", "ssn", "7", "string", 1, 16, ["last4"], "123-45-6789"),
    # The same text as `ssn-last4` ("6789") under another key: the normalizer list differs.
    ("ssn-digits-last4", "patients", "ssn", None, "string", 1, 256, ["digits", "last4"], "123-45-6789"),
    ("last4-fewer-than-four", "patients", "ssn", None, "string", 1, 256, ["last4"], "12"),
    ("last4-no-digits", "patients", "ssn", None, "string", 1, 256, ["last4"], "n/a"),
    ("last4-full-width", "patients", "ssn", None, "string", 1, 256, ["last4"], "１２３４５"),
    ("last4-unassigned-in-14", "patients", "ssn", None, "string", 1, 256, ["last4"], "12\U00010d4034"),
    ("casefold-prefix-3", "people", "surname", None, "string", 1, 256, ["casefold", "prefix(3)"], "STRAẞE"),
    ("prefix-3-then-casefold", "people", "surname", None, "string", 1, 256, ["prefix(3)", "casefold"], "ﬁnnish"),
    ("prefix-1-astral", "people", "code", None, "string", 1, 256, ["prefix(1)"], "😀abc"),
    ("prefix-1-combining-mark", "people", "code", None, "string", 1, 256, ["prefix(1)"], "e\u0301x"),
    ("prefix-3-shorter-text", "people", "code", None, "string", 1, 256, ["prefix(3)"], "ab"),
    ("prefix-3-empty", "people", "code", None, "string", 1, 256, ["prefix(3)"], ""),
    ("prefix-65535", "people", "code", "7", "string", 1, 24, ["trim", "prefix(65535)"], " abc "),
    # Appended for the mistakes no vector above catches (issue 29).
    # `casefold` applies NFKC first: Ⅻ becomes "xii" and ① "1" only through it.
    ("casefold-needs-nfkc", "people", "surname", None, "string", 1, 256, ["casefold"], "①Ⅻ"),
    # ... and not again after folding: ǰ folds to j + U+030C, which NFKC would recompose.
    ("casefold-no-nfkc-after", "people", "surname", None, "string", 1, 256, ["casefold"], "ǰ"),
    # Default-ignorable code points stay (this is not NFKC_Casefold).
    ("casefold-keeps-default-ignorables", "people", "surname", None, "string", 1, 256, ["casefold"],
     "A\u00adB\u200dC\u034f"),
    # Outlined digits (Unicode 16.0) are unassigned in 14.0.0: copied, so `digits` drops them.
    ("digits-outlined-unassigned-in-14", "patients", "phone", None, "string", 1, 256, ["digits"],
     "1\U0001ccf12"),
    # Every indexable type but string and i64 (their plaintext encodings, section 3).
    ("f64", "labs", "result", "7", "f64", 1, 256, [], "3ff8000000000000"),
    ("bytes", "docs", "hash", None, "bytes", 1, 256, [], "00ff10ee"),
    ("bool", "patients", "consent", None, "bool", 1, 8, [], True),
    ("uuid", "patients", "external_id", "7", "uuid", 1, 256, [], "67e55044-10b1-426f-9247-bb680e5fe0c8"),
    ("timestamp", "visits", "at", None, "timestamp", 1, 256, [], [1700000000, 5]),
    ("date", "patients", "dob", None, "date", 1, 256, [], -3653),
    # Integer tenants in their decimal form (section 2).
    ("tenant-integer", "patients", "email", "42", "string", 1, 256, ["email"], "ann@example.org"),
    ("tenant-negative-integer", "patients", "email", "-7", "string", 1, 256, ["email"], "ann@example.org"),
    # U+0295 is not Cased (a later Unicode's value, section 7.1): neither Σ below is final.
    ("lowercase-final-sigma-u0295", "people", "surname", None, "string", 1, 256, ["lowercase"],
     "\u0295\u03a3 a\u03a3\u0295 \u0295\u02b0\u03a3"),
]


def generate_index():
    out = []
    for name, table, column, tenant, vt, version, bits, steps, value in INDEX_CASES:
        idx = blind_index(ROOT, table, column, tenant, vt, version, bits, steps, value)
        out.append({
            "name": name, "root_key": ROOT.hex(), "table": table, "column": column, "tenant": tenant,
            "value_type": vt, "version": version, "bits": bits, "normalize": steps, "value": value,
            "index": idx.hex(),
        })
    INDEX_VECTORS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} vectors to {INDEX_VECTORS}")


def check_index():
    vectors = json.loads(INDEX_VECTORS.read_text())
    for v in vectors:
        got = blind_index(bytes.fromhex(v["root_key"]), v["table"], v["column"], v["tenant"], v["value_type"],
                          v["version"], v["bits"], v["normalize"], v["value"])
        assert got.hex() == v["index"], v["name"] + ": blind index"
    return len(vectors)


# --- Compound blind indexes (FORMAT.md section 7.2) ---------------------------------------

COMPOUND_VECTORS = HERE / "compound_index_v1.json"


def compound_index(root: bytes, table, index_name, tenant, version, bits, fields):
    """Section 7.2. `fields` is a list of {column, value_type, normalize, value}, in the order
    declared; None when any value is None (NULL)."""
    if not 1 <= len(fields) <= 0xFF:
        raise ValueError("a compound index has 1 to 255 fields")
    t = b"\x00" if tenant is None else b"\x01" + s(tenant)
    info = (b"encrypted-types/compound-index/v1" + s(table) + s(index_name) + t + struct.pack(">I", version)
            + struct.pack(">H", bits) + bytes([len(fields)]))
    data = b""
    for f in fields:
        vt, steps = f["value_type"], f["normalize"]
        if vt == "json":
            raise ValueError("a json field cannot be part of a compound index")
        if steps and vt != "string":
            raise ValueError("normalizers apply to string fields only")
        assert len(steps) <= 0xFF
        info += s(f["column"]) + s(vt) + bytes([len(steps)])
        for name in steps:
            normalize([name], "")  # an unknown name is refused before anything is derived
            info += bytes([len(name)]) + name.encode("ascii")
        if f["value"] is not None:
            raw = normalize(steps, f["value"]).encode() if vt == "string" else encode(vt, f["value"])
            data += struct.pack(">I", len(raw)) + raw
    if any(f["value"] is None for f in fields):
        return None
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root)
    return truncate(hmac.new(key, data, hashlib.sha256).digest(), bits)


def field(column, value_type, normalize_, value):
    return {"column": column, "value_type": value_type, "normalize": normalize_, "value": value}


DOB = 5551  # 1985-03-14, days since 1970-01-01 (the `date` value of v1.json)
NAME = field("last_name", "string", ["casefold"], "Müller")
BIRTH = field("date_of_birth", "date", [], DOB)
SSN4 = field("ssn", "string", ["last4"], "123-45-6789")
COMPOUND_CASES = [
    # name, table, index name, tenant, version, bits, fields (in the order declared)
    ("name-dob", "patients", "name_dob", None, 1, 256, [NAME, BIRTH]),
    ("name-dob-tenant", "patients", "name_dob", "7", 1, 256, [NAME, BIRTH]),
    ("name-dob-16-bits", "patients", "name_dob", None, 1, 16, [NAME, BIRTH]),
    ("name-dob-tenant-16-bits", "patients", "name_dob", "7", 1, 16, [NAME, BIRTH]),
    # The same normalized tuple as `name-dob`: case folding makes "MÜLLER" equal "Müller".
    ("name-dob-folded-equal", "patients", "name_dob", None, 1, 256,
     [field("last_name", "string", ["casefold"], "MÜLLER"), BIRTH]),
    # The fields of `name-dob` in the other order: another key, another index.
    ("dob-name-reordered", "patients", "name_dob", None, 1, 256, [BIRTH, NAME]),
    ("name-dob-v2", "patients", "name_dob", None, 2, 256, [NAME, BIRTH]),
    ("ssn-last4-dob-24-bits", "patients", "ssn4_dob", None, 1, 24, [SSN4, BIRTH]),
    ("ssn-last4-dob-24-bits-tenant", "patients", "ssn4_dob", "7", 1, 24, [SSN4, BIRTH]),
    # A partial index: one field, last four digits only.
    ("ssn-last4-partial-16-bits", "patients", "ssn_last4", None, 1, 16, [SSN4]),
    ("ssn-last4-partial", "patients", "ssn_last4", None, 1, 256, [SSN4]),
    # The length prefix keeps ("ab", "c") and ("a", "bc") apart.
    ("length-prefix-ab-c", "t", "pair", None, 1, 256,
     [field("first", "string", [], "ab"), field("second", "string", [], "c")]),
    ("length-prefix-a-bc", "t", "pair", None, 1, 256,
     [field("first", "string", [], "a"), field("second", "string", [], "bc")]),
    ("empty-strings", "t", "pair", None, 1, 256,
     [field("first", "string", [], ""), field("second", "string", [], "")]),
    ("casefold-prefix-3-dob", "patients", "name3_dob", None, 1, 256,
     [field("last_name", "string", ["casefold", "prefix(3)"], "STRAẞE"), BIRTH]),
    ("i64-and-string", "accounts", "number_branch", "clinic-a", 1, 64,
     [field("number", "i64", [], -1234567890123), field("branch", "string", ["trim", "lowercase"], " North ")]),
]


def generate_compound():
    out = []
    for name, table, index_name, tenant, version, bits, fields in COMPOUND_CASES:
        idx = compound_index(ROOT, table, index_name, tenant, version, bits, fields)
        out.append({
            "name": name, "root_key": ROOT.hex(), "table": table, "index_name": index_name, "tenant": tenant,
            "version": version, "bits": bits, "fields": fields, "index": idx.hex(),
        })
    COMPOUND_VECTORS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} vectors to {COMPOUND_VECTORS}")


def check_compound():
    vectors = json.loads(COMPOUND_VECTORS.read_text())
    by_name = {}
    for v in vectors:
        got = compound_index(bytes.fromhex(v["root_key"]), v["table"], v["index_name"], v["tenant"],
                             v["version"], v["bits"], v["fields"])
        assert got.hex() == v["index"], v["name"] + ": compound index"
        by_name[v["name"]] = v["index"]
    # Properties the vectors are there to show.
    assert by_name["name-dob"] == by_name["name-dob-folded-equal"]
    assert by_name["name-dob"] != by_name["dob-name-reordered"]
    assert by_name["length-prefix-ab-c"] != by_name["length-prefix-a-bc"]
    assert by_name["name-dob"] != by_name["name-dob-v2"]
    assert not by_name["name-dob"].startswith(by_name["name-dob-16-bits"])
    # A compound index over one field is not the single-field index of the column (section 7.2).
    single = blind_index(ROOT, "patients", "ssn", None, "string", 1, 256, ["last4"], "123-45-6789")
    assert single.hex() != by_name["ssn-last4-partial"]
    # A NULL field gives a NULL index; a json field, a normalizer on a non-string field and
    # an unknown normalizer are refused; `prefix(n)` takes 1 <= n <= 65535 in shortest decimal.
    assert compound_index(ROOT, "patients", "name_dob", None, 1, 256, [NAME, dict(BIRTH, value=None)]) is None
    refused = [
        [field("allergies", "json", [], {"a": 1})],
        [NAME, field("allergies", "json", [], None)],
        [field("date_of_birth", "date", ["digits"], DOB)],
        [field("last_name", "string", ["prefix(0)"], "x")],
        [field("last_name", "string", ["upper"], "x")],
        [],
    ]
    for fields in refused:
        try:
            compound_index(ROOT, "patients", "x", None, 1, 256, fields)
            raise AssertionError(f"accepted {fields}")
        except ValueError:
            pass
    for step in ("prefix(0)", "prefix(00)", "prefix(03)", "prefix(65536)", "prefix(-1)", "prefix(+3)",
                 "prefix()", "prefix(3", "prefix( 3)", "prefix(３)", "Prefix(3)", "last4 "):
        try:
            normalize([step], "abc")
            raise AssertionError(f"accepted {step!r}")
        except ValueError:
            pass
    assert normalize(["prefix(65535)"], "abc") == "abc" and normalize(["prefix(2)"], "😀é") == "😀é"
    assert normalize(["last4"], "") == "" and normalize(["last4"], "a1b2c3d4e5") == "2345"
    return len(vectors)


def generate():
    # The suite-1 file predates suites: its entries carry no "suite" field.
    for suite, path in ((1, VECTORS), (2, SUITE2_VECTORS)):
        out = []
        for name, key, key_id, nb, table, column, tenant, vt, value in CASES:
            ctx = dict(table=table, column=column, tenant=tenant, value_type=vt)
            nonce = bytes([nb] * 12)
            pt = encode(vt, value)
            v = {
                "name": name, "key": key.hex(), "key_id": key_id, "nonce": nonce.hex(),
                "table": table, "column": column, "tenant": tenant, "value_type": vt,
                "value": value, "plaintext": pt.hex(), "sealed": seal(key, key_id, nonce, ctx, pt, suite).hex(),
            }
            if suite != 1:
                v["suite"] = suite
            out.append(v)
        path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {len(out)} vectors to {path}")
    out = []
    for name, key, key_id, nb, table, column, tenant, vt, value, row in ROW_CASES:
        ctx = dict(table=table, column=column, tenant=tenant, value_type=vt)
        nonce = bytes([nb] * 12)
        pt = encode(vt, value)
        out.append({
            "name": name, "key": key.hex(), "key_id": key_id, "nonce": nonce.hex(),
            "table": table, "column": column, "tenant": tenant, "value_type": vt,
            "value": value, "plaintext": pt.hex(), "suite": 3, "row": row,
            "row_binding": row_binding(row).hex(),
            "sealed": seal(key, key_id, nonce, ctx, pt, 3, row).hex(),
        })
    SUITE3_VECTORS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} vectors to {SUITE3_VECTORS}")


# A JSON value 127 deep cannot sit in a vector file's "value" (a JSON parser that stops at 128
# levels, as serde_json does, could not read the file): this file gives the plaintext only.
JSON_DEPTH_VECTORS = HERE / "v1_json_depth.json"


SCHEMA_CASES = [
    # name, key, key id, nonce byte, table, column, tenant, value type, value, schema, row
    ("schema-no-tenant", KEY_A, 1, 0x41, "patients", "email", None, "string", "ann@example.org",
     "clinic_a", None),
    ("schema-tenant", KEY_B, 0xA1B2C3D4, 0x42, "patients", "email", "clinic-a", "string",
     "ann@example.org", "clinic_b", None),
    ("schema-empty-name", KEY_A, 1, 0x43, "t", "c", None, "i64", 42, "", None),
    ("schema-utf8", KEY_A, 1, 0x44, "patients", "notes", None, "string", "Zoë", "klinik_zoë", None),
    ("schema-row", KEY_B, 0xA1B2C3D4, 0x45, "visits", "code", "clinic-a", "string", "Z00.0",
     "clinic_a", [{"text": "V-2026-0001"}]),
    ("schema-row-composite", KEY_A, 1, 0x46, "visits", "code", None, "i64", 7, "s",
     [{"int": 1}, {"text": "p-9"}]),
]


def generate_schema():
    """v1_schema.json: suites 4 and 5, and what a reader refuses (FORMAT.md section 2.2)."""
    out = []
    for name, key, key_id, nb, table, column, tenant, vt, value, schema, row in SCHEMA_CASES:
        suite = 5 if row is not None else 4
        ctx = dict(table=table, column=column, tenant=tenant, value_type=vt, schema=schema)
        nonce = bytes([nb] * 12)
        pt = encode(vt, value)
        header6 = bytes([1, suite]) + struct.pack(">I", key_id)
        v = {"name": name, "key": key.hex(), "key_id": key_id, "nonce": nonce.hex(),
             "table": table, "column": column, "tenant": tenant, "value_type": vt, "schema": schema,
             "value": value, "plaintext": pt.hex(), "suite": suite,
             "aad": (aad(header6, **ctx) + (row_binding(row) if row else b"")).hex()}
        if row is not None:
            v["row"] = row
            v["row_binding"] = row_binding(row).hex()
        v["sealed"] = seal(key, key_id, nonce, ctx, pt, suite, row).hex()
        out.append(v)
    # Refusals: (name, sealed, table, column, value type, tenant of the key, schema read with,
    # row, error). The reader's context is the column's, the value is the vector's.
    first, bound = out[0], out[4]
    s4, s5 = bytes.fromhex(first["sealed"]), bytes.fromhex(bound["sealed"])
    plain2 = seal(KEY_A, 1, bytes([0x47] * 12), dict(table="patients", column="email", tenant=None,
                                                      value_type="string"), b"ann@example.org", 2)
    relabel = lambda b, suite: b[:1] + bytes([suite]) + b[2:]
    refusals = [
        ("another-schema", s4, "patients", "email", "string", None, "clinic_b", None, "AuthenticationFailed"),
        ("no-schema-reads-suite-4", s4, "patients", "email", "string", None, None, None, "UnsupportedSuite"),
        ("suite-2-in-a-schema-column", plain2, "patients", "email", "string", None, "clinic_a", None,
         "SchemaMismatch"),
        ("suite-4-relabelled-2", relabel(s4, 2), "patients", "email", "string", None, "clinic_a", None,
         "SchemaMismatch"),
        ("suite-2-relabelled-4", relabel(plain2, 4), "patients", "email", "string", None, "clinic_a", None,
         "AuthenticationFailed"),
        ("schema-as-table-prefix", s4, "clinic_a.patients", "email", "string", None, "", None,
         "AuthenticationFailed"),
        ("suite-5-without-row", s5, "visits", "code", "string", "clinic-a", "clinic_a", None, "RowBinding"),
        ("suite-5-relabelled-4", relabel(s5, 4), "visits", "code", "string", "clinic-a", "clinic_a",
         [{"text": "V-2026-0001"}], "RowBinding"),
        ("suite-5-another-schema", s5, "visits", "code", "string", "clinic-a", "clinic_b",
         [{"text": "V-2026-0001"}], "AuthenticationFailed"),
        ("suite-5-no-schema", s5, "visits", "code", "string", "clinic-a", None,
         [{"text": "V-2026-0001"}], "UnsupportedSuite"),
    ]
    doc = {"keys": [{"key_id": 1, "key": KEY_A.hex(), "tenant": None},
                    {"key_id": 0xA1B2C3D4, "key": KEY_B.hex(), "tenant": "clinic-a"}],
           "vectors": out,
           "invalid": [{"name": n, "sealed": b.hex(), "table": t, "column": c, "value_type": vt,
                        "tenant": tn, "schema": sc, "row": r, "error": e}
                       for n, b, t, c, vt, tn, sc, r, e in refusals]}
    SCHEMA_VECTORS.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} vectors and {len(refusals)} refusals to {SCHEMA_VECTORS}")


def check_schema(doc) -> int:
    """Section 2.2: the AAD of each vector, and each refusal with its error."""
    for v in doc["vectors"]:
        header6 = bytes.fromhex(v["sealed"])[:6]
        ctx = dict(table=v["table"], column=v["column"], tenant=v["tenant"], value_type=v["value_type"],
                   schema=v["schema"])
        extra = row_binding(v["row"]) if "row" in v else b""
        assert aad(header6, **ctx) + extra == bytes.fromhex(v["aad"]), v["name"] + ": aad"
        assert v["suite"] == (5 if "row" in v else 4), v["name"]
    keys = {k["key_id"]: (bytes.fromhex(k["key"]), k["tenant"]) for k in doc["keys"]}
    for v in doc["invalid"]:
        ctx = dict(table=v["table"], column=v["column"], value_type=v["value_type"])
        if v["schema"] is not None:
            ctx["schema"] = v["schema"]
        try:
            open_(keys, ctx, bytes.fromhex(v["sealed"]), row=v["row"])
            raise AssertionError(v["name"] + ": opened")
        except Invalid as e:
            assert str(e) == v["error"], f'{v["name"]}: {e} instead of {v["error"]}'
    return len(doc["invalid"])


def generate_json_depth():
    out = []
    for suite, nb in ((1, 0x18), (2, 0x19)):
        ctx = dict(table="patients", column="allergies", tenant=None, value_type="json")
        nonce = bytes([nb] * 12)
        pt = encode("json", nested(127))
        out.append({"name": f"json-depth-127-suite-{suite}", "key": KEY_A.hex(), "key_id": 1,
                    "nonce": nonce.hex(), "table": "patients", "column": "allergies", "tenant": None,
                    "value_type": "json", "suite": suite, "plaintext": pt.hex(),
                    "sealed": seal(KEY_A, 1, nonce, ctx, pt, suite).hex()})
    JSON_DEPTH_VECTORS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {len(out)} vectors to {JSON_DEPTH_VECTORS}")


def check_json_depth():
    """127 levels open; the same text one level deeper does not."""
    n = 0
    for v in json.loads(JSON_DEPTH_VECTORS.read_text()):
        keys = {1: (bytes.fromhex(v["key"]), None)}
        ctx = dict(table=v["table"], column=v["column"], value_type="json")
        pt = open_(keys, ctx, bytes.fromhex(v["sealed"]))
        assert pt.hex() == v["plaintext"], v["name"] + ": open"
        try:
            decode("json", pt)
        except Invalid as e:
            raise AssertionError(v["name"] + ": decode") from e
        try:
            decode("json", b"[" + pt + b"]")
            raise AssertionError(v["name"] + ": 128 levels accepted")
        except Invalid:
            pass
        n += 1
    return n


INVALID_VECTORS = HERE / "v1_invalid.json"
# The keyring every negative vector is opened with: id -> (key, tenant); id 9 is destroyed.
NEG_KEYS = {1: (KEY_A, None), 2: (KEY_B, "clinic-a"), 3: (bytes(range(0x80, 0xA0)), "clinic-b")}
NEG_DESTROYED = {9}


def invalid_cases():
    """(name, sealed bytes, table, column, value type, row tenant, error)."""
    def sealed(key_id, vt, pt, nb=0x21, table="patients", column="email", tenant=False, suite=1, row=None):
        key, key_tenant = NEG_KEYS[key_id]
        aad_tenant = key_tenant if tenant is False else tenant
        return seal(key, key_id, bytes([nb] * 12),
                    dict(table=table, column=column, tenant=aad_tenant, value_type=vt), pt, suite, row)

    good = sealed(1, "string", b"ann@example.org")
    flip = lambda b, i: b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]
    row = lambda name, b, err, table="patients", column="email", vt="string", tenant=None: \
        (name, b, table, column, vt, tenant, err, None)
    cases = [
        row("empty", b"", "Truncated"),
        row("version-0", b"\x00" + good[1:], "UnsupportedVersion"),
        row("version-2", b"\x02" + good[1:], "UnsupportedVersion"),
        row("version-2-short", b"\x02\x01", "UnsupportedVersion"),
        row("one-byte", b"\x01", "Truncated"),
        row("33-bytes", good[:33], "Truncated"),
        row("suite-0", good[:1] + b"\x00" + good[2:], "UnsupportedSuite"),
        # Suite 2 exists since format v1 gained it: a suite-1 value relabelled as suite 2 is
        # opened as AES-256-GCM-SIV and fails (it was "UnsupportedSuite" before suite 2).
        row("suite-2", good[:1] + b"\x02" + good[2:], "AuthenticationFailed"),
        # Suite 3 (bound to the row) came next: read in a column that is not bound, it is
        # refused before any decryption (it was "UnsupportedSuite" before suite 3).
        row("suite-3", good[:1] + b"\x03" + good[2:], "RowBinding"),
        row("suite-4", good[:1] + b"\x04" + good[2:], "UnsupportedSuite"),
        row("suite-255", good[:1] + b"\xff" + good[2:], "UnsupportedSuite"),
        row("unknown-key-id", good[:2] + struct.pack(">I", 7) + good[6:], "UnknownKeyId"),
        row("key-id-0", good[:2] + struct.pack(">I", 0) + good[6:], "UnknownKeyId"),
        row("destroyed-key-id", good[:2] + struct.pack(">I", 9) + good[6:], "KeyDestroyed"),
        row("key-id-of-another-key", good[:2] + struct.pack(">I", 2) + good[6:], "AuthenticationFailed"),
        row("tampered-nonce", flip(good, 6), "AuthenticationFailed"),
        row("tampered-ciphertext", flip(good, 18), "AuthenticationFailed"),
        row("tampered-tag", flip(good, len(good) - 1), "AuthenticationFailed"),
        row("truncated-tag", good[:-1], "AuthenticationFailed"),
        row("appended-byte", good + b"\x00", "AuthenticationFailed"),
        row("wrong-table", good, "AuthenticationFailed", table="visits"),
        row("wrong-column", good, "AuthenticationFailed", column="name"),
        row("wrong-type", good, "AuthenticationFailed", vt="bytes"),
        # Sealed under clinic-b's key with clinic-a in the AAD: the opener takes the tenant from
        # the key, so the context differs.
        row("aad-tenant-not-the-keys", sealed(3, "string", b"123-45-6789", column="ssn", tenant="clinic-a"),
            "AuthenticationFailed", column="ssn", tenant="clinic-b"),
        row("aad-tenant-on-untenanted-key", sealed(1, "string", b"x", column="ssn", tenant="clinic-a"),
            "AuthenticationFailed", column="ssn", tenant=None),
        # A valid value of clinic-a read in a row of clinic-b (or of no tenant).
        row("tenant-mismatch", sealed(2, "string", b"123-45-6789", column="ssn"), "TenantMismatch",
            column="ssn", tenant="clinic-b"),
        row("tenant-missing", sealed(2, "string", b"123-45-6789", column="ssn"), "TenantMismatch",
            column="ssn", tenant=None),
        row("tenant-unexpected", sealed(1, "string", b"x", column="ssn"), "TenantMismatch",
            column="ssn", tenant="clinic-a"),
    ]
    # Suite 2 (AES-256-GCM-SIV): the same checks on a value of the suite every value is sealed in.
    good2 = sealed(1, "string", b"ann@example.org", nb=0x22, suite=2)
    cases += [
        row("suite2-as-suite-1", good2[:1] + b"\x01" + good2[2:], "AuthenticationFailed"),
        row("suite2-33-bytes", good2[:33], "Truncated"),
        row("suite2-unknown-key-id", good2[:2] + struct.pack(">I", 7) + good2[6:], "UnknownKeyId"),
        row("suite2-destroyed-key-id", good2[:2] + struct.pack(">I", 9) + good2[6:], "KeyDestroyed"),
        row("suite2-key-id-of-another-key", good2[:2] + struct.pack(">I", 2) + good2[6:], "AuthenticationFailed"),
        row("suite2-tampered-nonce", flip(good2, 6), "AuthenticationFailed"),
        row("suite2-tampered-ciphertext", flip(good2, 18), "AuthenticationFailed"),
        row("suite2-tampered-tag", flip(good2, len(good2) - 1), "AuthenticationFailed"),
        row("suite2-truncated-tag", good2[:-1], "AuthenticationFailed"),
        row("suite2-appended-byte", good2 + b"\x00", "AuthenticationFailed"),
        row("suite2-wrong-table", good2, "AuthenticationFailed", table="visits"),
        row("suite2-wrong-column", good2, "AuthenticationFailed", column="name"),
        row("suite2-wrong-type", good2, "AuthenticationFailed", vt="bytes"),
        row("suite2-aad-tenant-not-the-keys",
            sealed(3, "string", b"123-45-6789", column="ssn", tenant="clinic-a", suite=2),
            "AuthenticationFailed", column="ssn", tenant="clinic-b"),
        row("suite2-tenant-mismatch", sealed(2, "string", b"123-45-6789", column="ssn", suite=2),
            "TenantMismatch", column="ssn", tenant="clinic-b"),
        row("suite2-non-canonical-bool", sealed(1, "bool", b"\x02", nb=0x23, column="c", suite=2),
            "InvalidPlaintext", column="c", vt="bool"),
        row("suite2-non-canonical-string", sealed(1, "string", b"\xc0\xaf", nb=0x24, column="c", suite=2),
            "InvalidPlaintext", column="c"),
    ]
    # Suite 3 (bound to the row): (name, sealed, table, column, value type, row tenant, error, row).
    row7, row8 = [{"int": 7}], [{"int": 8}]
    good3 = sealed(1, "string", b"123-45-6789", nb=0x25, column="ssn", suite=3, row=row7)
    plain2 = sealed(1, "string", b"123-45-6789", nb=0x26, column="ssn", suite=2)
    comp = [{"int": 1}, {"text": "p-9"}]
    good3c = sealed(1, "string", b"x", nb=0x27, column="ssn", suite=3, row=comp)
    bound = lambda name, b, err, row: (name, b, "patients", "ssn", "string", None, err, row)
    cases += [
        bound("suite3-copied-to-another-row", good3, "AuthenticationFailed", row8),
        bound("suite3-read-without-its-row", good3, "RowBinding", None),
        bound("suite2-in-a-bound-column", plain2, "RowBinding", row7),
        bound("suite3-relabelled-suite-2-bound-column", good3[:1] + b"\x02" + good3[2:], "RowBinding", row7),
        bound("suite3-relabelled-suite-2", good3[:1] + b"\x02" + good3[2:], "AuthenticationFailed", None),
        bound("suite2-relabelled-suite-3", plain2[:1] + b"\x03" + plain2[2:], "AuthenticationFailed", row7),
        bound("suite3-tampered-tag", flip(good3, len(good3) - 1), "AuthenticationFailed", row7),
        bound("suite3-row-parts-swapped", good3c, "AuthenticationFailed", [{"text": "p-9"}, {"int": 1}]),
        bound("suite3-row-int-as-text", good3, "AuthenticationFailed", [{"text": "7"}]),
        bound("suite3-row-extra-part", good3, "AuthenticationFailed", [{"int": 7}, {"int": 0}]),
    ]
    # Non-canonical plaintexts, properly sealed: every one opens and fails to decode.
    non_canonical = [
        ("string", "c3"), ("string", "c0af"), ("string", "eda080"), ("string", "f4908080"), ("string", "ff"),
        ("bool", ""), ("bool", "02"), ("bool", "ff"), ("bool", "0000"),
        ("i16", "00"), ("i16", "000000"), ("i32", "000000"), ("i64", "00000000000000"), ("i64", "000000000000000000"),
        ("f64", "00000000000000"), ("date", "000000"), ("date", struct.pack(">i", DAY_MAX + 1).hex()),
        ("date", struct.pack(">i", DAY_MIN - 1).hex()), ("date", "7fffffff"),
        ("timestamp", "0000000000000000"), ("timestamp", struct.pack(">qI", 0, 2 * 10**9).hex()),
        ("timestamp", struct.pack(">qI", 58, 10**9).hex()), ("timestamp", struct.pack(">qI", -2, 10**9).hex()),
        ("timestamp", struct.pack(">qI", DAY_MAX * 86400 + 86400, 0).hex()),
        ("timestamp", struct.pack(">qI", DAY_MIN * 86400 - 1, 0).hex()),
        ("timestamptz", struct.pack(">qI", 0, 0xFFFFFFFF).hex()),
        ("uuid", "00" * 15), ("uuid", "00" * 17),
    ]
    for i, (vt, hexpt) in enumerate(non_canonical):
        cases.append(row(f"non-canonical-{vt}-{i}", sealed(1, vt, bytes.fromhex(hexpt), nb=0x40 + i, column="c"),
                         "InvalidPlaintext", column="c", vt=vt))
    bad_json = [
        b"", b" ", b"{", b'{"a":1} x', b"NaN", b"[Infinity]", b"1e400", b'{"a":1,"a":2}',
        b'{"a":1,"\\u0061":2}', b'"\\ud800"', b'["\\udc00x"]', b"\xef\xbb\xbf{}", b'"\x01"', b"\xff",
        b"[" * (JSON_MAX_DEPTH + 1) + b"]" * (JSON_MAX_DEPTH + 1), b"{'a':1}", b"[1,]", b"01",
        b"1" + b"0" * 400,
    ]
    for i, text in enumerate(bad_json):
        cases.append(row(f"non-canonical-json-{i}", sealed(1, "json", text, nb=0x80 + i, column="c"),
                         "InvalidPlaintext", column="c", vt="json"))
    # Inputs that fail two checks at once: the earlier step of section 5 names the error.
    key_id = lambda b, k: b[:2] + struct.pack(">I", k) + b[6:]
    of_a = sealed(2, "string", b"123-45-6789", nb=0xA0, column="ssn", suite=2)
    of_a_bound = sealed(2, "string", b"123-45-6789", nb=0xA1, column="ssn", suite=3, row=row7)
    bad_bool_of_a = sealed(2, "bool", b"\x02", nb=0xA2, column="c", suite=2)
    cases += [
        row("pair-version-and-unknown-key", b"\x00" + key_id(good, 7)[1:], "UnsupportedVersion"),
        row("pair-truncated-and-suite", good[:1] + b"\x09" + good[2:20], "Truncated"),
        row("pair-suite-and-unknown-key", key_id(good[:1] + b"\x09" + good[2:], 7), "UnsupportedSuite"),
        row("pair-suite-and-destroyed-key", key_id(good[:1] + b"\x00" + good[2:], 9), "UnsupportedSuite"),
        row("pair-unknown-key-and-wrong-column", key_id(good, 7), "UnknownKeyId", column="name"),
        row("pair-destroyed-key-and-tampered-tag", flip(key_id(good, 9), len(good) - 1), "KeyDestroyed"),
        bound("pair-unknown-key-and-row-binding", key_id(good3, 7), "UnknownKeyId", None),
        bound("pair-row-binding-and-tampered-tag", flip(good3, len(good3) - 1), "RowBinding", None),
        ("pair-row-binding-and-tenant", of_a_bound, "patients", "ssn", "string", "clinic-b", "RowBinding", None),
        ("pair-authentication-and-tenant", flip(of_a, len(of_a) - 1), "patients", "ssn", "string", "clinic-b",
         "AuthenticationFailed", None),
        ("pair-wrong-column-and-tenant", of_a, "patients", "name", "string", "clinic-b", "AuthenticationFailed",
         None),
        ("pair-plaintext-and-tenant", bad_bool_of_a, "patients", "c", "bool", "clinic-b", "InvalidPlaintext",
         None),
    ]
    return cases


def generate_invalid():
    out = []
    for n, b, t, c, vt, ten, err, rw in invalid_cases():
        v = {"name": n, "sealed": b.hex(), "table": t, "column": c, "value_type": vt, "tenant": ten,
             "error": err}
        if rw is not None:  # only the suite-3 vectors read their value in a bound column
            v["row"] = rw
        out.append(v)
    doc = {
        "keys": [{"key_id": i, "key": k.hex(), "tenant": t} for i, (k, t) in sorted(NEG_KEYS.items())],
        "destroyed": sorted(NEG_DESTROYED),
        "vectors": out,
    }
    INVALID_VECTORS.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} vectors to {INVALID_VECTORS}")


def check_invalid():
    doc = json.loads(INVALID_VECTORS.read_text())
    keys = {k["key_id"]: (bytes.fromhex(k["key"]), k["tenant"]) for k in doc["keys"]}
    for v in doc["vectors"]:
        try:
            open_row(keys, set(doc["destroyed"]), v["table"], v["column"], v["value_type"], v["tenant"],
                     bytes.fromhex(v["sealed"]), v.get("row"))
            raise AssertionError(v["name"] + ": opened")
        except Invalid as e:
            assert str(e) == v["error"], f'{v["name"]}: {e} instead of {v["error"]}'
    # The deepest nesting accepted, and equal keys in different objects.
    depth = JSON_MAX_DEPTH
    decode_json(b"[" * depth + b"]" * depth)
    decode_json(b' {"a":{"a":1},"b":[{"a":2},{"a":3}]} ')
    # A value one byte over the limit is refused from its length alone (not stored as a file).
    try:
        open_(keys, {}, b"\x01\x01" + bytes((1 << 30) + 33))
        raise AssertionError("too large")
    except Invalid as e:
        assert str(e) == "TooLarge"
    return len(doc["vectors"])


# --- The key table (docs/KEYTABLE.md) -------------------------------------------------------

KEYTABLE_VECTORS = HERE / "keytable_v1.json"
PURPOSE = {"data": 1, "blind_index": 2, "wrapping": 3}


def lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def opt(b) -> bytes:
    return b"\x00" if b is None else b"\x01" + lp(b)


def kek_aad(tenant, purpose: str, key_id: int) -> bytes:
    """KEYTABLE.md section 2: the context every wrap is bound to."""
    t = b"\x00" if tenant is None else b"\x01" + struct.pack(">Q", len(tenant.encode())) + tenant.encode()
    return b"encrypted-types/kek/v1" + t + bytes([PURPOSE[purpose]]) + struct.pack(">I", key_id)


def wrap_aad(wrapping_id: int, tenant, purpose: str, key_id: int) -> bytes:
    """Section 2.1: a key wrapped by wrapping key `wrapping_id`."""
    return b"encrypted-types/keytable/wrap/v1" + struct.pack(">I", wrapping_id) + kek_aad(tenant, purpose, key_id)


def check_value(key: bytes) -> bytes:
    """Section 3."""
    return hmac.new(key, b"encrypted-types/keytable/check/v1", hashlib.sha256).digest()[:16]


def mac_key(w: bytes, w_id: int) -> bytes:
    """Section 4."""
    info = b"encrypted-types/keytable/mac/v1" + struct.pack(">I", w_id)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(w)


def record_mac(m: bytes, r: dict) -> bytes:
    """Section 4: `r` holds the record's columns, bytes as hex."""
    hx = lambda k: None if r[k] is None else bytes.fromhex(r[k])
    data = (b"encrypted-types/keytable/record/v1" + struct.pack(">q", r["key_id"])
            + opt(None if r["tenant"] is None else r["tenant"].encode())
            + lp(r["purpose"].encode()) + lp(r["state"].encode()) + struct.pack(">q", r["generation"])
            + lp(r["kek_ref"].encode()) + opt(hx("wrapped_key")) + opt(hx("check_value"))
            + struct.pack(">q", r["mac_key_id"]))
    return hmac.new(m, data, hashlib.sha256).digest()


def record_mac_v2(m: bytes, r: dict) -> bytes:
    """Section 4.1: version 2 covers the timestamps too; stored as 0x02 || tag."""
    hx = lambda k: None if r[k] is None else bytes.fromhex(r[k])
    data = (b"encrypted-types/keytable/record/v2" + struct.pack(">q", r["key_id"])
            + opt(None if r["tenant"] is None else r["tenant"].encode())
            + lp(r["purpose"].encode()) + lp(r["state"].encode()) + struct.pack(">q", r["generation"])
            + lp(r["kek_ref"].encode()) + opt(hx("wrapped_key")) + opt(hx("check_value"))
            + struct.pack(">q", r["mac_key_id"])
            + struct.pack(">q", r["created_at"]) + struct.pack(">q", r["state_changed_at"]))
    return b"\x02" + hmac.new(m, data, hashlib.sha256).digest()


def verify_record_mac(m: bytes, r: dict) -> bool:
    """Section 4: a 33-byte MAC starting 0x02 is version 2, a 32-byte one version 1."""
    stored = bytes.fromhex(r["record_mac"])
    if len(stored) == 33 and stored[0] == 2:
        return hmac.compare_digest(stored, record_mac_v2(m, r))
    if len(stored) == 32:
        return hmac.compare_digest(stored, record_mac(m, r))
    return False


def unwrap(kek_or_wrapping: bytes, aad_: bytes, wrapped: bytes) -> bytes:
    """Sections 2.1 to 2.3: nonce (12) || ciphertext (32) || tag (16)."""
    assert len(wrapped) == 60, "a wrapped key is 60 bytes"
    return AESGCM(kek_or_wrapping).decrypt(wrapped[:12], wrapped[12:], aad_)


KEK = bytes(range(0xA0, 0xC0))
WRAPPING = bytes(range(0xC0, 0xE0))
DEK = bytes(range(0xE0, 0x100))


def generate_keytable():
    w_id, dek_id = 0x1A2B3C4D, 0x05060708
    # The deployment wrapping key under a local KEK (section 2.2, also PKCS#11 section 2.3).
    n1 = bytes([0x31] * 12)
    w_wrapped = n1 + AESGCM(KEK).encrypt(n1, WRAPPING, kek_aad(None, "wrapping", w_id))
    # A tenant's data key under the wrapping key (section 2.1).
    n2 = bytes([0x32] * 12)
    dek_wrapped = n2 + AESGCM(WRAPPING).encrypt(n2, DEK, wrap_aad(w_id, "clinic-a", "data", dek_id))
    w_record = {"key_id": w_id, "tenant": None, "purpose": "wrapping", "state": "active", "generation": 1,
                "kek_ref": "local:dev.kek", "wrapped_key": w_wrapped.hex(),
                "check_value": check_value(WRAPPING).hex(), "mac_key_id": w_id}
    dek_record = {"key_id": dek_id, "tenant": "clinic-a", "purpose": "data", "state": "active", "generation": 2,
                  "kek_ref": f"key:{w_id}", "wrapped_key": dek_wrapped.hex(),
                  "check_value": check_value(DEK).hex(), "mac_key_id": w_id}
    destroyed = dict(dek_record, key_id=dek_id + 1, state="destroyed", wrapped_key=None, generation=1)
    n3 = bytes([0x33] * 12)
    root_id = dek_id + 2
    root_wrapped = n3 + AESGCM(WRAPPING).encrypt(n3, ROOT, wrap_aad(w_id, "clinic-a", "blind_index", root_id))
    root = dict(dek_record, key_id=root_id, purpose="blind_index", generation=1, wrapped_key=root_wrapped.hex(),
                check_value=check_value(ROOT).hex())
    m = mac_key(WRAPPING, w_id)
    out = {
        "kek": KEK.hex(), "wrapping_key": WRAPPING.hex(), "data_key": DEK.hex(),
        "mac_key": m.hex(),
        "blind_index_root": ROOT.hex(),
        "records": [dict(r, record_mac=record_mac(m, r).hex()) for r in (w_record, dek_record, destroyed, root)],
    }
    KEYTABLE_VECTORS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {len(out['records'])} records to {KEYTABLE_VECTORS}")


def check_keytable():
    """Recovers the data key from the frozen records and the KEK alone, checking every MAC."""
    doc = json.loads(KEYTABLE_VECTORS.read_text())
    kek = bytes.fromhex(doc["kek"])
    records = {r["key_id"]: r for r in doc["records"]}
    n = 0
    for r in doc["records"]:
        if r["purpose"] != "wrapping" or r["tenant"] is not None:
            continue
        w = unwrap(kek, kek_aad(None, "wrapping", r["key_id"]), bytes.fromhex(r["wrapped_key"]))
        assert check_value(w).hex() == r["check_value"], "wrapping key: check value"
        assert w.hex() == doc["wrapping_key"]
        m = mac_key(w, r["key_id"])
        assert m.hex() == doc["mac_key"], "MAC key"
        for x in doc["records"]:
            assert record_mac(m, x).hex() == x["record_mac"], f"record {x['key_id']}: MAC"
            altered = dict(x, state="active" if x["state"] != "active" else "retired")
            assert record_mac(m, altered).hex() != x["record_mac"]
            n += 1
            if x["kek_ref"] == f"key:{r['key_id']}" and x["wrapped_key"]:
                k = unwrap(w, wrap_aad(r["key_id"], x["tenant"], x["purpose"], x["key_id"]),
                           bytes.fromhex(x["wrapped_key"]))
                assert check_value(k).hex() == x["check_value"], "check value"
                assert k.hex() == doc["data_key" if x["purpose"] == "data" else "blind_index_root"]
                try:
                    unwrap(w, wrap_aad(r["key_id"], "clinic-b", x["purpose"], x["key_id"]),
                           bytes.fromhex(x["wrapped_key"]))
                    raise AssertionError("unwrapped under another tenant")
                except InvalidTag:
                    pass
                n += 1
    assert n == len(records) + 2, n
    return n


KEYTABLE_MAC2_VECTORS = HERE / "keytable_v1_mac2.json"
KEK_CHECK_VECTORS = HERE / "kek_check_v1.json"
KEYTABLE_INVALID_VECTORS = HERE / "keytable_v1_invalid.json"


def generate_keytable_mac2():
    """The records of keytable_v1.json with timestamps, authenticated by version 2 MACs."""
    doc = json.loads(KEYTABLE_VECTORS.read_text())
    m = bytes.fromhex(doc["mac_key"])
    stamps = [(1796600000, 1796600000), (1796600100, 1796600100), (1796600200, 1796686600),
              (1796600300, 1796600300)]
    records = []
    for r, (created, changed) in zip(doc["records"], stamps):
        x = {k: v for k, v in r.items() if k != "record_mac"}
        x.update(created_at=created, state_changed_at=changed)
        records.append(dict(x, record_mac=record_mac_v2(m, x).hex()))
    out = dict({k: v for k, v in doc.items() if k != "records"}, records=records)
    KEYTABLE_MAC2_VECTORS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {len(records)} records to {KEYTABLE_MAC2_VECTORS}")


def check_keytable_mac2():
    """Every version 2 MAC verifies; a changed timestamp, or the MAC read as version 1, does not."""
    doc = json.loads(KEYTABLE_MAC2_VECTORS.read_text())
    w = unwrap(bytes.fromhex(doc["kek"]), kek_aad(None, "wrapping", doc["records"][0]["key_id"]),
               bytes.fromhex(doc["records"][0]["wrapped_key"]))
    m = mac_key(w, doc["records"][0]["key_id"])
    assert m.hex() == doc["mac_key"]
    n = 0
    for r in doc["records"]:
        assert verify_record_mac(m, r), f"record {r['key_id']}: v2 MAC"
        for field in ("created_at", "state_changed_at"):
            assert not verify_record_mac(m, dict(r, **{field: r[field] - 1})), field
        assert not verify_record_mac(m, dict(r, record_mac=r["record_mac"][2:])), "v2 tag read as v1"
        n += 1
    return n


def kek_check(kek: bytes) -> bytes:
    """KEYTABLE section 3.1: a local KEK's check value."""
    return hmac.new(kek, b"encrypted-types/kek/check/v1", hashlib.sha256).digest()[:16]


def generate_kek_check():
    """The check value of the key-table vectors' KEK and of two more KEKs."""
    keks = [json.loads(KEYTABLE_VECTORS.read_text())["kek"], "01" * 32, "ff" * 31 + "fe"]
    out = [{"kek": k, "kek_check": kek_check(bytes.fromhex(k)).hex()} for k in keks]
    KEK_CHECK_VECTORS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {len(out)} KEK check values to {KEK_CHECK_VECTORS}")


def check_kek_check():
    """Every KEK check value recomputes, and differs from the KEK's key check value (section 3)."""
    n = 0
    for v in json.loads(KEK_CHECK_VECTORS.read_text()):
        kek = bytes.fromhex(v["kek"])
        assert kek_check(kek).hex() == v["kek_check"], v["kek"]
        assert check_value(kek).hex() != v["kek_check"], "the two labels must differ"
        n += 1
    return n


class Refused(Exception):
    """A key table a reader must refuse: the error variant and the key id it names."""

    def __init__(self, variant: str, key_id=None):
        super().__init__(variant, key_id)
        self.variant, self.key_id = variant, key_id


def pkcs11_check_value(kek: bytes) -> bytes:
    """Section 3.1: an AES key's CKA_CHECK_VALUE (PKCS#11 2.40): the first 3 bytes of the zero
    block encrypted under it."""
    enc = Cipher(algorithms.AES(kek), modes.ECB()).encryptor()
    return (enc.update(bytes(16)) + enc.finalize())[:3]


def unwrap_by_kek(kek: bytes, aad_: bytes, wrapped: bytes) -> bytes:
    """Sections 2.2 and 2.3: a local KEK and a PKCS#11 key give the same bytes."""
    return unwrap(kek, aad_, wrapped)


def aws_context(tenant, purpose: str, key_id: int) -> dict:
    """Section 2.4: the encryption context of every KMS call for a key."""
    pairs = {"purpose": purpose, "key_id": str(key_id)}
    if tenant is not None:
        pairs["tenant"] = tenant
    return pairs


def has_hierarchy_traces(r: dict) -> bool:
    """Section 2.5: what only a table with wrapping keys writes."""
    return (r["purpose"] == "wrapping" or r["generation"] != 0 or r["check_value"] is not None
            or r.get("mac_key_id") is not None or r.get("record_mac") is not None
            or r["kek_ref"].startswith("key:"))


def kek_failure(kek: bytes, r: dict) -> "Refused":
    """Section 3.1: an unwrap under the record's KEK failed; its KEK check value, if it has
    one, names the error."""
    stored = r.get("kek_check")
    ours = pkcs11_check_value(kek) if r["kek_ref"].startswith("pkcs11:") else kek_check(kek)
    if stored and stored != ours.hex():
        return Refused("WrongKek")
    return Refused("KeyUnwrap", r["key_id"])


def wrapped_by(kek_ref: str):
    """Section 1: the wrapping key `key:<w>` names, as this library parses it, or None."""
    if not kek_ref.startswith("key:"):
        return None
    digits = kek_ref[4:]
    digits = digits[1:] if digits.startswith("+") else digits
    if not digits or not all("0" <= c <= "9" for c in digits) or int(digits) > 0xFFFFFFFF:
        return None
    return int(digits)


def open_by_kek(kek: bytes, r: dict) -> bytes:
    """A data or blind-index key wrapped by a KEK itself (section 2.5), checked if it has a
    check value."""
    try:
        k = unwrap_by_kek(kek, kek_aad(r["tenant"], r["purpose"], r["key_id"]), bytes.fromhex(r["wrapped_key"]))
    except (InvalidTag, AssertionError):
        raise kek_failure(kek, r)
    if r["check_value"] is not None and check_value(k).hex() != r["check_value"]:
        raise Refused("KeyCheck", r["key_id"])
    return k


def load_table(kek: bytes, records: list, kek_ref: str = "local:dev.kek", tenant_keks=None,
               legacy: bool = False):
    """KEYTABLE section 5, as a reader holding the deployment KEK `kek` (named `kek_ref`),
    `tenant_keks` ({tenant: (kek_ref, kek)}, each tenant's own KEK) and the legacy opt-in or
    not. Returns (live keys by id, unavailable tenants), or raises Refused with the first
    failure in the order the section and its error table give."""
    tenant_keks = tenant_keks or {}
    if any(ref == kek_ref for ref, _ in tenant_keks.values()):
        raise Refused("KekRoles")  # one KEK in both roles: the configuration is refused
    recs = sorted(records, key=lambda r: r["key_id"])
    hierarchical = any(r["purpose"] == "wrapping" and r["tenant"] is None for r in recs)
    if not hierarchical and recs and not legacy:
        raise Refused("KeyRecord", recs[0]["key_id"])  # from before the hierarchy, no opt-in
    macs = {}
    for r in recs:  # step 1: live deployment wrapping keys
        if r["purpose"] != "wrapping" or r["tenant"] is not None or r["state"] == "destroyed":
            continue
        if r["kek_ref"] != kek_ref or r["wrapped_key"] is None:
            raise Refused("KeyRecord", r["key_id"])
        try:
            w = unwrap_by_kek(kek, kek_aad(None, "wrapping", r["key_id"]), bytes.fromhex(r["wrapped_key"]))
        except (InvalidTag, AssertionError):
            raise kek_failure(kek, r)
        if r["check_value"] is None:
            raise Refused("KeyRecord", r["key_id"])
        if check_value(w).hex() != r["check_value"]:
            raise Refused("KeyCheck", r["key_id"])
        m = mac_key(w, r["key_id"])
        if r["mac_key_id"] != r["key_id"] or not verify_record_mac(m, r):
            raise Refused("KeyRecord", r["key_id"])
        macs[r["key_id"]] = (w, m)

    def authentic(r):
        named = macs.get(r["mac_key_id"])
        return named is not None and verify_record_mac(named[1], r)

    tenant_wrappers, unavailable = {}, set()
    for r in recs:  # step 4: tenants' own wrapping keys, each authenticated first
        if r["tenant"] is None or r["purpose"] != "wrapping" or r["state"] == "destroyed":
            continue
        if not authentic(r):
            raise Refused("KeyRecord", r["key_id"])
        if r["kek_ref"] == kek_ref:
            raise Refused("KekRoles")  # a deployment KEK never vouches for a tenant's key
        ref, tkek = tenant_keks.get(r["tenant"], (None, None))
        try:
            if ref != r["kek_ref"] or r["wrapped_key"] is None or r["check_value"] is None:
                raise ValueError("no KEK for it here")
            w = unwrap_by_kek(tkek, kek_aad(r["tenant"], "wrapping", r["key_id"]), bytes.fromhex(r["wrapped_key"]))
            if check_value(w).hex() != r["check_value"]:
                raise ValueError("check value")
            tenant_wrappers[r["key_id"]] = (w, r["tenant"])
        except (InvalidTag, AssertionError, ValueError):
            unavailable.add(r["tenant"])  # that tenant only, never an error of the load
    owners = {t for _, t in tenant_wrappers.values()}
    keys = {}
    for r in recs:  # steps 2 and 5, in key-id order: the MAC, then the unwrap and check value
        if not hierarchical:
            if has_hierarchy_traces(r):
                raise Refused("KeyRecord", r["key_id"])
        elif not authentic(r):
            raise Refused("KeyRecord", r["key_id"])
        if r["purpose"] == "wrapping" or r["state"] == "destroyed" or r["tenant"] in unavailable:
            continue
        if r["wrapped_key"] is None:
            raise Refused("KeyRecord", r["key_id"])
        own = r["tenant"] in owners
        w_id = wrapped_by(r["kek_ref"])
        if w_id is None:
            if own:
                raise Refused("KeyRecord", r["key_id"])
            if r["kek_ref"] != kek_ref:
                raise Refused("KeyRecord", r["key_id"])
            keys[r["key_id"]] = open_by_kek(kek, r)  # from before the hierarchy: one KEK call
            continue
        if w_id in macs and not own:
            w = macs[w_id][0]
        elif w_id not in macs and w_id in tenant_wrappers and tenant_wrappers[w_id][1] == r["tenant"]:
            w = tenant_wrappers[w_id][0]
        else:
            raise Refused("KeyRecord", r["key_id"])
        try:
            k = unwrap(w, wrap_aad(w_id, r["tenant"], r["purpose"], r["key_id"]),
                       bytes.fromhex(r["wrapped_key"]))
        except (InvalidTag, AssertionError):
            raise Refused("KeyUnwrap", r["key_id"])
        if r["check_value"] is None:
            raise Refused("KeyRecord", r["key_id"])
        if check_value(k).hex() != r["check_value"]:
            raise Refused("KeyCheck", r["key_id"])
        keys[r["key_id"]] = k
    check_groups(recs, unavailable, hierarchical)
    return keys, sorted(unavailable)


def check_groups(recs: list, unavailable: set, hierarchical: bool):
    """Steps 3 and 6, per tenant in order of first appearance (key-id order); step 3 only in a
    table with a deployment wrapping key, step 6 not for an unavailable tenant."""
    rank = {"data": 0, "blind_index": 1, "wrapping": 2}
    tenants = []
    for r in recs:
        if r["tenant"] not in tenants:
            tenants.append(r["tenant"])
    for t in tenants:
        group = sorted((r for r in recs if r["tenant"] == t),
                       key=lambda r: (rank[r["purpose"]], r["generation"], r["key_id"]))
        live_key = next((r for r in group if r["state"] != "destroyed" and r["purpose"] != "wrapping"), None)
        live_wrapping = next((r for r in group if r["state"] != "destroyed" and r["purpose"] == "wrapping"), None)
        for purpose in ("data", "blind_index", "wrapping"):
            of = [r for r in group if r["purpose"] == purpose]
            if hierarchical:
                for a, b in zip(of, of[1:]):
                    if a["generation"] == b["generation"]:
                        raise Refused("KeyRecord", b["key_id"])
                newest = of[-1]["generation"] if of else 0
                for r in of:
                    if r["state"] == "active" and r["generation"] != newest:
                        raise Refused("KeyRecord", r["key_id"])
            live = live_wrapping if purpose == "wrapping" else live_key
            active = sum(r["state"] == "active" for r in of)
            if live is not None and t not in unavailable and active != 1:
                raise Refused("KeyRecord", live["key_id"])


def invalid_keytable_cases():
    """Each case: a change to the vector table of keytable_v1.json, what a reader holds, and the
    refusal expected."""
    doc = json.loads(KEYTABLE_VECTORS.read_text())
    base = {r["key_id"]: r for r in doc["records"]}
    w_id, dek_id = 0x1A2B3C4D, 0x05060708
    destroyed_id, root_id = dek_id + 1, dek_id + 2
    m = mac_key(WRAPPING, w_id)
    other_kek = bytes(range(0x10, 0x30))

    def table(changes=None, remac=(), drop=()):
        out = []
        for key_id, r in base.items():
            if key_id in drop:
                continue
            r = dict(r, **(changes or {}).get(key_id, {}))
            if key_id in remac:
                r["record_mac"] = record_mac(m, r).hex()
            out.append(r)
        return out

    def flip(hex_: str, at: int = -1) -> str:
        b = bytearray(bytes.fromhex(hex_))
        b[at] ^= 1
        return b.hex()

    rewrapped = (bytes([0x34] * 12) + AESGCM(WRAPPING).encrypt(
        bytes([0x34] * 12), DEK, wrap_aad(w_id, "clinic-a", "data", destroyed_id))).hex()
    return [
        ("tampered record MAC", KEK, table({dek_id: {"record_mac": flip(base[dek_id]["record_mac"])}}),
         ("KeyRecord", dek_id)),
        ("state changed without its MAC (active to retired)", KEK,
         table({dek_id: {"state": "retired"}}), ("KeyRecord", dek_id)),
        # (The table's own constraints allow one active key per tenant and purpose, and wrapped
        # bytes exactly on keys not destroyed: the newer key is retired, authenticated, first.)
        ("a destroyed key re-activated by editing its state", KEK,
         table({dek_id: {"state": "retired"}, destroyed_id: {"state": "active", "wrapped_key": rewrapped}},
               remac={dek_id}), ("KeyRecord", destroyed_id)),
        ("a data key moved to another tenant", KEK, table({dek_id: {"tenant": "clinic-b"}}),
         ("KeyRecord", dek_id)),
        ("a blind-index root moved to the data purpose", KEK,
         table({root_id: {"purpose": "data", "state": "retired"}}), ("KeyRecord", root_id)),
        ("the wrapping key's MAC names another key", KEK, table({w_id: {"mac_key_id": dek_id}}),
         ("KeyRecord", w_id)),
        ("wrong KEK, record without a KEK check value", other_kek, table(), ("KeyUnwrap", w_id)),
        ("wrong KEK, record with the right KEK's check value", other_kek,
         table({w_id: {"kek_check": kek_check(KEK).hex()}}), ("WrongKek", None)),
        ("right KEK, an edited KEK check value (not under the MAC)", KEK,
         table({w_id: {"kek_check": kek_check(other_kek).hex()}}), None),
        ("wrapping key's check value edited (checked before its own MAC)", KEK,
         table({w_id: {"check_value": flip(base[w_id]["check_value"])}}), ("KeyCheck", w_id)),
        ("data key's check value edited (its MAC covers it)", KEK,
         table({dek_id: {"check_value": flip(base[dek_id]["check_value"])}}), ("KeyRecord", dek_id)),
        ("data key's check value edited and re-authenticated", KEK,
         table({dek_id: {"check_value": flip(base[dek_id]["check_value"])}}, remac={dek_id}),
         ("KeyCheck", dek_id)),
        ("data key's wrapped bytes altered and re-authenticated", KEK,
         table({dek_id: {"wrapped_key": flip(base[dek_id]["wrapped_key"], 20)}}, remac={dek_id}),
         ("KeyUnwrap", dek_id)),
        ("a tenant without its blind-index root", KEK, table(drop={root_id}), ("KeyRecord", dek_id)),
        ("an older data key active again, authenticated", KEK,
         table({dek_id: {"state": "retired"}, destroyed_id: {"state": "active", "wrapped_key": rewrapped}},
               remac={dek_id, destroyed_id}), ("KeyRecord", destroyed_id)),
        ("two data keys of one generation, authenticated", KEK,
         table({destroyed_id: {"generation": 2}}, remac={destroyed_id}), ("KeyRecord", destroyed_id)),
        ("a table from before the hierarchy, without the opt-in", KEK,
         [dict(r, mac_key_id=None, record_mac=None, generation=0) for r in table(drop={w_id})],
         ("KeyRecord", dek_id)),
    ]


def generate_keytable_invalid():
    cases = []
    for name, kek, records, want in invalid_keytable_cases():
        try:
            load_table(kek, records)
            got = None
        except Refused as e:
            got = (e.variant, e.key_id)
        assert got == want, f"{name}: {got} != {want}"
        cases.append({"name": name, "kek": kek.hex(), "records": records,
                      "error": None if want is None else {"variant": want[0], "key_id": want[1]}})
    KEYTABLE_INVALID_VECTORS.write_text(json.dumps(cases, indent=2) + "\n")
    print(f"wrote {len(cases)} cases to {KEYTABLE_INVALID_VECTORS}")


def check_keytable_invalid():
    """Every case is refused with its error, naming its key; the one with no error loads."""
    n = 0
    for c in json.loads(KEYTABLE_INVALID_VECTORS.read_text()):
        try:
            load_table(bytes.fromhex(c["kek"]), c["records"])
            got = None
        except Refused as e:
            got = {"variant": e.variant, "key_id": e.key_id}
        assert got == c["error"], f"{c['name']}: {got} != {c['error']}"
        n += 1
    base = json.loads(KEYTABLE_VECTORS.read_text())
    assert len(load_table(KEK, base["records"])[0]) == 2, "the valid table loads its two keys"
    return n + 1


# --- Providers, tenants' own KEKs and tables from before the hierarchy (issue 29) ----------

PKCS11_VECTORS = HERE / "keytable_v1_pkcs11.json"
TENANT_KEK_VECTORS = HERE / "keytable_v1_tenant_kek.json"
LEGACY_VECTORS = HERE / "keytable_v1_legacy.json"
KMS_CONTEXT_VECTORS = HERE / "kms_context_v1.json"
TENANT_KEK = bytes(range(0x60, 0x80))
TENANT_WRAPPING = bytes(range(0x20, 0x40))
STAMP = 1796700000


def wrapped(key: bytes, nonce_byte: int, plaintext: bytes, aad_: bytes) -> str:
    n = bytes([nonce_byte] * 12)
    return (n + AESGCM(key).encrypt(n, plaintext, aad_)).hex()


def record(key_id, tenant, purpose, kek_ref, wrapped_key, key, generation=1, state="active",
           mac_key_id=None, kek_check_=None):
    """A record of section 1 before its MAC; the check value of `key` if it has one."""
    r = {"key_id": key_id, "tenant": tenant, "purpose": purpose, "state": state,
         "generation": generation, "kek_ref": kek_ref, "wrapped_key": wrapped_key,
         "check_value": None if key is None else check_value(key).hex(), "mac_key_id": mac_key_id,
         "created_at": STAMP, "state_changed_at": STAMP}
    if kek_check_ is not None:
        r["kek_check"] = kek_check_.hex()
    return r


def authenticated(m: bytes, *records) -> list:
    return [dict(r, record_mac=record_mac_v2(m, r).hex()) for r in records]


def generate_pkcs11():
    """A table whose deployment wrapping key a PKCS#11 key wraps (section 2.3), with the key's
    CKA_CHECK_VALUE (section 3.1), version 2 MACs (section 4.1)."""
    label, w_id, dek_id, root_id = "encrypted-types-kek", 0x11223344, 0x0A0B0C0D, 0x0A0B0C0E
    ref = f"pkcs11:{label}"
    w = record(w_id, None, "wrapping", ref, wrapped(KEK, 0x41, WRAPPING, kek_aad(None, "wrapping", w_id)),
               WRAPPING, mac_key_id=w_id, kek_check_=pkcs11_check_value(KEK))
    dek = record(dek_id, "clinic-h", "data", f"key:{w_id}",
                 wrapped(WRAPPING, 0x42, DEK, wrap_aad(w_id, "clinic-h", "data", dek_id)), DEK, mac_key_id=w_id)
    root = record(root_id, "clinic-h", "blind_index", f"key:{w_id}",
                  wrapped(WRAPPING, 0x43, ROOT, wrap_aad(w_id, "clinic-h", "blind_index", root_id)), ROOT,
                  mac_key_id=w_id)
    out = {"kek": KEK.hex(), "kek_label": label, "kek_check": pkcs11_check_value(KEK).hex(),
           "wrapping_key": WRAPPING.hex(), "data_key": DEK.hex(), "blind_index_root": ROOT.hex(),
           "records": authenticated(mac_key(WRAPPING, w_id), w, dek, root)}
    PKCS11_VECTORS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {PKCS11_VECTORS}")


def check_pkcs11():
    """The PKCS#11 table loads with the HSM key's bytes; another key under the same label is
    WrongKek, named by the stored CKA_CHECK_VALUE."""
    doc = json.loads(PKCS11_VECTORS.read_text())
    kek, ref = bytes.fromhex(doc["kek"]), "pkcs11:" + doc["kek_label"]
    assert pkcs11_check_value(kek).hex() == doc["kek_check"] == doc["records"][0]["kek_check"]
    keys, gone = load_table(kek, doc["records"], kek_ref=ref)
    assert gone == [] and sorted(k.hex() for k in keys.values()) == sorted([doc["data_key"], doc["blind_index_root"]])
    try:
        load_table(TENANT_KEK, doc["records"], kek_ref=ref)
        raise AssertionError("loaded under another HSM key")
    except Refused as e:
        assert (e.variant, e.key_id) == ("WrongKek", None), e.variant
    return 2


def tenant_kek_cases():
    """The table of a deployment with one tenant (clinic-t) that brought its own KEK (section
    5 step 4), and changes to it: (name, records, the tenant KEK the reader holds, outcome)."""
    w_id, tw_id, dek_id, root_id = 0x1A2B3C4D, 0x2B3C4D5E, 0x06070809, 0x0607080A
    t, tref = "clinic-t", "local:clinic-t.kek"
    m = mac_key(WRAPPING, w_id)
    w = record(w_id, None, "wrapping", "local:dev.kek",
               wrapped(KEK, 0x51, WRAPPING, kek_aad(None, "wrapping", w_id)), WRAPPING, mac_key_id=w_id,
               kek_check_=kek_check(KEK))
    tw = record(tw_id, t, "wrapping", tref, wrapped(TENANT_KEK, 0x52, TENANT_WRAPPING, kek_aad(t, "wrapping", tw_id)),
                TENANT_WRAPPING, mac_key_id=w_id, kek_check_=kek_check(TENANT_KEK))
    dek = record(dek_id, t, "data", f"key:{tw_id}",
                 wrapped(TENANT_WRAPPING, 0x53, DEK, wrap_aad(tw_id, t, "data", dek_id)), DEK, mac_key_id=w_id)
    root = record(root_id, t, "blind_index", f"key:{tw_id}",
                  wrapped(TENANT_WRAPPING, 0x54, ROOT, wrap_aad(tw_id, t, "blind_index", root_id)), ROOT,
                  mac_key_id=w_id)
    base = authenticated(m, w, tw, dek, root)

    def changed(key_id, **fields):
        out = []
        for r in base:
            if r["key_id"] == key_id:
                r = {k: v for k, v in dict(r, **fields).items() if k != "record_mac"}
                r = dict(r, record_mac=record_mac_v2(m, r).hex())
            out.append(r)
        return out

    flipped = [dict(r, record_mac=r["record_mac"][:-2] + ("00" if r["record_mac"][-2:] != "00" else "01"))
               if r["key_id"] == tw_id else r for r in base]
    other = bytes(range(0x10, 0x30))
    ok = {"keys": [dek_id, root_id], "unavailable": []}
    gone = {"keys": [], "unavailable": [t]}
    return base, [
        ("the tenant's KEK held: its keys load", base, TENANT_KEK, ok),
        ("the tenant's KEK not held: that tenant is unavailable, the load succeeds", base, None, gone),
        ("another key under the tenant's KEK name: that tenant is unavailable", base, other, gone),
        ("the tenant's wrapping key not authenticated: the load is refused", flipped, TENANT_KEK,
         {"error": {"variant": "KeyRecord", "key_id": tw_id}}),
        ("the tenant's data key moved under the deployment wrapping key, authenticated", changed(
            dek_id, kek_ref=f"key:{w_id}", wrapped_key=wrapped(WRAPPING, 0x55, DEK, wrap_aad(w_id, t, "data", dek_id))),
         TENANT_KEK, {"error": {"variant": "KeyRecord", "key_id": dek_id}}),
        ("the tenant's data key wrapped by the deployment KEK itself, authenticated", changed(
            dek_id, kek_ref="local:dev.kek", wrapped_key=wrapped(KEK, 0x56, DEK, kek_aad(t, "data", dek_id))),
         TENANT_KEK, {"error": {"variant": "KeyRecord", "key_id": dek_id}}),
        ("the tenant's wrapping key under the deployment KEK, authenticated", changed(
            tw_id, kek_ref="local:dev.kek", kek_check=kek_check(KEK).hex(),
            wrapped_key=wrapped(KEK, 0x57, TENANT_WRAPPING, kek_aad(t, "wrapping", tw_id))),
         TENANT_KEK, {"error": {"variant": "KekRoles", "key_id": None}}),
        ("the deployment wrapping key under the tenant's KEK, authenticated", [
            dict(r, record_mac=record_mac_v2(m, r).hex()) for r in (
                {k: v for k, v in (dict(b, kek_ref=tref, kek_check=kek_check(TENANT_KEK).hex(),
                                        wrapped_key=wrapped(TENANT_KEK, 0x58, WRAPPING,
                                                            kek_aad(None, "wrapping", w_id)))
                                   if b["key_id"] == w_id else b).items() if k != "record_mac"}
                for b in base)],
         TENANT_KEK, {"error": {"variant": "KeyRecord", "key_id": w_id}}),
    ]


def outcome(records, tenant_kek=None, legacy=False):
    """What a load gives, as the outcome files write it: a reader holding the vector KEK,
    clinic-t's own KEK if given, and the legacy opt-in or not."""
    tks = {} if tenant_kek is None else {"clinic-t": ("local:clinic-t.kek", tenant_kek)}
    try:
        keys, gone = load_table(KEK, records, tenant_keks=tks, legacy=legacy)
        return {"keys": sorted(keys), "unavailable": gone}
    except Refused as e:
        return {"error": {"variant": e.variant, "key_id": e.key_id}}


def checked_cases(cases, held: str) -> list:
    """Each (name, records, what the reader holds, outcome) checked against this loader, as
    the file writes it; `held` is `outcome`'s argument for what the reader holds."""
    out = []
    for name, records, holds, want in cases:
        got = outcome(records, **{held: holds})
        assert got == want, f"{name}: {got} != {want}"
        out.append({"name": name, "records": records,
                    held: holds.hex() if isinstance(holds, bytes) else holds, "outcome": want})
    return out


def generate_tenant_kek():
    base, cases = tenant_kek_cases()
    out_cases = checked_cases(cases, "tenant_kek")
    out = {"kek": KEK.hex(), "tenant": "clinic-t", "tenant_kek": TENANT_KEK.hex(),
           "tenant_kek_ref": "local:clinic-t.kek", "tenant_wrapping_key": TENANT_WRAPPING.hex(),
           "data_key": DEK.hex(), "blind_index_root": ROOT.hex(), "records": base, "cases": out_cases}
    TENANT_KEK_VECTORS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {len(out_cases)} cases to {TENANT_KEK_VECTORS}")


def check_tenant_kek():
    """The tenant's keys come out of its own wrapping key under its own KEK; each case's outcome."""
    doc = json.loads(TENANT_KEK_VECTORS.read_text())
    tkek = bytes.fromhex(doc["tenant_kek"])
    keys, _ = load_table(bytes.fromhex(doc["kek"]), doc["records"],
                         tenant_keks={doc["tenant"]: (doc["tenant_kek_ref"], tkek)})
    assert sorted(k.hex() for k in keys.values()) == sorted([doc["data_key"], doc["blind_index_root"]])
    tw = next(r for r in doc["records"] if r["tenant"] and r["purpose"] == "wrapping")
    assert unwrap(tkek, kek_aad(doc["tenant"], "wrapping", tw["key_id"]),
                  bytes.fromhex(tw["wrapped_key"])).hex() == doc["tenant_wrapping_key"]
    n = 1
    for c in doc["cases"]:
        held = None if c["tenant_kek"] is None else bytes.fromhex(c["tenant_kek"])
        got = outcome(c["records"], tenant_kek=held)
        assert got == c["outcome"], f'{c["name"]}: {got} != {c["outcome"]}'
        n += 1
    return n


def legacy_cases():
    """A table from before the hierarchy (section 2.5): every key wrapped by the KEK itself,
    generation 0, no check value and no MAC; and changes to it: (name, records, opt-in, outcome)."""
    dek_id, old_id, root_id = 0x05060708, 0x05060709, 0x0506070A
    t = "clinic-a"

    def legacy(key_id, purpose, key, nonce_byte, state="active"):
        r = record(key_id, t, purpose, "local:dev.kek",
                   None if key is None else wrapped(KEK, nonce_byte, key, kek_aad(t, purpose, key_id)), None,
                   generation=0, state=state)
        return dict(r, record_mac=None)

    base = [legacy(old_id, "data", None, 0, "destroyed"), legacy(dek_id, "data", DEK, 0x61),
            legacy(root_id, "blind_index", ROOT, 0x62)]
    with_check = [dict(r, check_value=check_value(DEK).hex()) if r["key_id"] == dek_id else r for r in base]
    other_ref = [dict(r, kek_ref="local:old.kek") if r["key_id"] == root_id else r for r in base]
    altered = [dict(r, wrapped_key=r["wrapped_key"][:40] + ("00" if r["wrapped_key"][40:42] != "00" else "01")
                    + r["wrapped_key"][42:]) if r["key_id"] == dek_id else r for r in base]
    ok = {"keys": [dek_id, root_id], "unavailable": []}
    return base, [
        ("loaded with the opt-in", base, True, ok),
        ("refused without the opt-in", base, False, {"error": {"variant": "KeyRecord", "key_id": dek_id}}),
        ("a record with a check value (a stripped newer table)", with_check, True,
         {"error": {"variant": "KeyRecord", "key_id": dek_id}}),
        ("a key wrapped by a KEK this reader does not hold", other_ref, True,
         {"error": {"variant": "KeyRecord", "key_id": root_id}}),
        ("altered wrap bytes", altered, True, {"error": {"variant": "KeyUnwrap", "key_id": dek_id}}),
    ]


def generate_legacy():
    base, cases = legacy_cases()
    out_cases = checked_cases(cases, "legacy")
    out = {"kek": KEK.hex(), "data_key": DEK.hex(), "blind_index_root": ROOT.hex(), "records": base,
           "cases": out_cases}
    LEGACY_VECTORS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {len(out_cases)} cases to {LEGACY_VECTORS}")


def check_legacy():
    doc = json.loads(LEGACY_VECTORS.read_text())
    keys, _ = load_table(bytes.fromhex(doc["kek"]), doc["records"], legacy=True)
    assert sorted(k.hex() for k in keys.values()) == sorted([doc["data_key"], doc["blind_index_root"]])
    n = 1
    for c in doc["cases"]:
        got = outcome(c["records"], legacy=c["legacy"])
        assert got == c["outcome"], f'{c["name"]}: {got} != {c["outcome"]}'
        n += 1
    return n


def generate_kms_context():
    """Section 2.4: the encryption context of a key of no tenant, of tenants that look like
    numbers or nothing, and of the highest key id."""
    keys = [(None, "wrapping", 0x1A2B3C4D), ("clinic-a", "data", 0x05060708), ("clinic-a", "blind_index", 7),
            ("", "data", 1), ("42", "wrapping", 0xFFFFFFFF), ("Zürich-Ω", "data", 305419896)]
    out = [{"tenant": t, "purpose": p, "key_id": k, "context": aws_context(t, p, k)} for t, p, k in keys]
    KMS_CONTEXT_VECTORS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} contexts to {KMS_CONTEXT_VECTORS}")


def check_kms_context():
    n = 0
    for v in json.loads(KMS_CONTEXT_VECTORS.read_text(encoding="utf-8")):
        assert aws_context(v["tenant"], v["purpose"], v["key_id"]) == v["context"], v
        n += 1
    return n


MANIFEST_VECTORS = HERE / "keytable_v1_manifest.json"


def group_digest(records: list) -> bytes:
    """Section 6: a group's records in key-id order, each its id and MAC."""
    h = hashlib.sha256(b"encrypted-types/keytable/manifest/group/v1")
    for r in sorted(records, key=lambda r: r["key_id"]):
        h.update(struct.pack(">q", r["key_id"]) + opt(None if r["record_mac"] is None else bytes.fromhex(r["record_mac"])))
    return h.digest()


def manifest_row_mac(m: bytes, scope: str, epoch: int, digest: bytes, mac_key_id: int) -> bytes:
    data = (b"encrypted-types/keytable/manifest/row/v1" + lp(scope.encode()) + struct.pack(">q", epoch)
            + lp(digest) + struct.pack(">q", mac_key_id))
    return hmac.new(m, data, hashlib.sha256).digest()


def manifest_entry(m: bytes, scope: str, epoch: int, digest: bytes) -> bytes:
    data = b"encrypted-types/keytable/manifest/entry/v1" + lp(scope.encode()) + struct.pack(">q", epoch) + lp(digest)
    return hmac.new(m, data, hashlib.sha256).digest()


def scope_of(tenant) -> str:
    return "none" if tenant is None else "tenant:" + tenant


def manifest_row(m: bytes, m_id: int, scope: str, epoch: int, digest: bytes) -> dict:
    return {"scope": scope, "epoch": epoch, "digest": digest.hex(), "mac_key_id": m_id,
            "mac": manifest_row_mac(m, scope, epoch, digest, m_id).hex()}


def xor_all(entries) -> bytes:
    acc = bytes(32)
    for e in entries:
        acc = bytes(a ^ b for a, b in zip(acc, e))
    return acc


def check_manifest(macs: dict, rows: list, records: list, tenants=None, min_epoch=None):
    """Section 6 after section 5: `macs` maps the live deployment wrapping keys' ids to their
    MAC keys; `tenants` is None for a full load, else the tenants a scoped load reads (whose
    records, with those of no tenant, are `records`). Returns the deployment epoch, or raises
    Refused("Manifest", scope)."""
    if tenants is not None:
        wanted = {scope_of(None), "deployment"} | {scope_of(t) for t in tenants}
        rows = [r for r in rows if r["scope"] in wanted]
        records = [r for r in records if r["tenant"] is None or r["tenant"] in tenants]

    def verified(row) -> bytes:
        m = macs.get(row["mac_key_id"])
        if m is None or not hmac.compare_digest(
                bytes.fromhex(row["mac"]),
                manifest_row_mac(m, row["scope"], row["epoch"], bytes.fromhex(row["digest"]), row["mac_key_id"])):
            raise Refused("Manifest", row["scope"])
        return m

    dep = next((r for r in rows if r["scope"] == "deployment"), None)
    if dep is None:
        if not records and not rows:
            return None
        raise Refused("Manifest", "deployment")
    m_d = verified(dep)
    if min_epoch is not None and dep["epoch"] < min_epoch:
        raise Refused("Manifest", "deployment")
    groups = {}
    for r in records:
        groups.setdefault(scope_of(r["tenant"]), []).append(r)
    by_scope = {r["scope"]: r for r in rows if r["scope"] != "deployment"}
    for scope in sorted(groups):
        row = by_scope.get(scope)
        if row is None:
            raise Refused("Manifest", scope)
        verified(row)
        if group_digest(groups[scope]).hex() != row["digest"]:
            raise Refused("Manifest", scope)
    for scope, row in sorted(by_scope.items()):
        if row["epoch"] > 0 and scope not in groups:
            raise Refused("Manifest", scope)
    if tenants is None:
        changed = [r for r in by_scope.values() if r["epoch"] > 0]
        for r in changed:
            verified(r)
        acc = xor_all(manifest_entry(m_d, r["scope"], r["epoch"], bytes.fromhex(r["digest"])) for r in changed)
        if acc.hex() != dep["digest"]:
            raise Refused("Manifest", "deployment")
    return dep["epoch"]


def manifest_outcome(macs, rows, records, tenants=None, min_epoch=None):
    try:
        return {"epoch": check_manifest(macs, rows, records, tenants, min_epoch)}
    except Refused as e:
        return {"error": {"variant": e.variant, "scope": e.key_id}}


def generate_manifest():
    """Section 6: the table of keytable_v1_mac2.json with its manifest, and eight cases."""
    doc = json.loads(KEYTABLE_MAC2_VECTORS.read_text())
    m = bytes.fromhex(doc["mac_key"])
    records = doc["records"]
    w = records[0]
    m_id = w["key_id"]
    # The destroyed data key as it was while retired: wrapped, its MAC as genuine as the rest.
    dead = records[2]
    older = dict(dead, state="retired", state_changed_at=dead["created_at"] + 100,
                 wrapped_key=(bytes([0x34] * 12) + AESGCM(WRAPPING).encrypt(
                     bytes([0x34] * 12), DEK, wrap_aad(m_id, dead["tenant"], "data", dead["key_id"]))).hex())
    older["record_mac"] = record_mac_v2(m, older).hex()
    rolled_back = [older if r is dead else r for r in records]
    tenant = [r for r in records if r["tenant"] == "clinic-a"]
    none_row = manifest_row(m, m_id, "none", 2, group_digest([w]))
    tenant_row = manifest_row(m, m_id, "tenant:clinic-a", 3, group_digest(tenant))
    dep_digest = xor_all([manifest_entry(m, "none", 2, group_digest([w])),
                          manifest_entry(m, "tenant:clinic-a", 3, group_digest(tenant))])
    dep_row = manifest_row(m, m_id, "deployment", 5, dep_digest)
    manifest = [none_row, tenant_row, dep_row]
    older_row = manifest_row(m, m_id, "tenant:clinic-a", 2,
                             group_digest([r for r in rolled_back if r["tenant"] == "clinic-a"]))
    gone_row = manifest_row(m, m_id, "tenant:clinic-b", 1, group_digest([]))
    bad_mac = dict(tenant_row, mac=("00" if tenant_row["mac"][:2] != "00" else "01") + tenant_row["mac"][2:])
    macs = {m_id: m}
    cases = []
    for name, recs, rows, tenants, min_epoch in [
        ("as-is", records, manifest, None, None),
        ("as-is, pinned at its epoch", records, manifest, None, 5),
        ("as-is, pinned above its epoch", records, manifest, None, 6),
        ("a destroyed key restored from an older copy", rolled_back, manifest, None, None),
        ("... with its tenant's older manifest row: a full load", rolled_back,
         [none_row, older_row, dep_row], None, None),
        ("... with its tenant's older manifest row: a load of that tenant", rolled_back,
         [none_row, older_row, dep_row], ["clinic-a"], None),
        ("the tenant's manifest row altered", records, [none_row, bad_mac, dep_row], None, None),
        ("the tenant's manifest row deleted", records, [none_row, dep_row], None, None),
        ("the whole manifest deleted", records, [], None, None),
        ("a row whose records are gone", records, manifest + [gone_row], None, None),
        ("a row of a scope no group has", records,
         manifest + [manifest_row(m, m_id, "bogus", 1, group_digest([]))], None, None),
    ]:
        cases.append({"name": name, "records": recs, "manifest": rows, "tenants": tenants,
                      "min_epoch": min_epoch,
                      "outcome": manifest_outcome(macs, rows, recs, tenants, min_epoch)})
    out = {"kek": doc["kek"], "mac_key_id": m_id, "mac_key": doc["mac_key"], "records": records,
           "manifest": manifest, "cases": cases}
    MANIFEST_VECTORS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {len(cases)} manifest cases to {MANIFEST_VECTORS}")


def check_manifest_vectors():
    doc = json.loads(MANIFEST_VECTORS.read_text())
    w = doc["records"][0]
    m = mac_key(unwrap(bytes.fromhex(doc["kek"]), kek_aad(None, "wrapping", w["key_id"]),
                       bytes.fromhex(w["wrapped_key"])), w["key_id"])
    assert m.hex() == doc["mac_key"]
    macs = {doc["mac_key_id"]: m}
    n = 0
    for c in doc["cases"]:
        # Section 5 first: every case's records load on their own.
        load_table(bytes.fromhex(doc["kek"]), c["records"])
        got = manifest_outcome(macs, c["manifest"], c["records"], c["tenants"], c["min_epoch"])
        assert got == c["outcome"], f'{c["name"]}: {got} != {c["outcome"]}'
        n += 1
    return n


def check():
    check_unicode()
    vectors = json.loads(VECTORS.read_text())
    suite2 = json.loads(SUITE2_VECTORS.read_text())
    assert all("suite" not in v for v in vectors) and all(v["suite"] == 2 for v in suite2)
    suite3 = json.loads(SUITE3_VECTORS.read_text())
    assert all(v["suite"] == 3 and v["row_binding"] == row_binding(v["row"]).hex() for v in suite3)
    schema = json.loads(SCHEMA_VECTORS.read_text())
    vectors += suite2 + suite3 + schema["vectors"]
    for v in vectors:
        ctx = dict(table=v["table"], column=v["column"], value_type=v["value_type"])
        if "schema" in v:
            ctx["schema"] = v["schema"]
        keys = {v["key_id"]: (bytes.fromhex(v["key"]), v["tenant"])}
        pt = bytes.fromhex(v["plaintext"])
        assert encode(v["value_type"], v["value"]) == pt, v["name"] + ": plaintext encoding"
        sealed = bytes.fromhex(v["sealed"])
        assert seal(keys[v["key_id"]][0], v["key_id"], bytes.fromhex(v["nonce"]), dict(ctx, tenant=v["tenant"]), pt,
                    v.get("suite", 1), v.get("row")) == sealed, v["name"] + ": seal"
        assert sealed[1] == v.get("suite", 1), v["name"] + ": suite byte"
        assert open_(keys, ctx, sealed, row=v.get("row")) == pt, v["name"] + ": open"
        try:
            decode(v["value_type"], pt)
        except Invalid as e:
            raise AssertionError(v["name"] + ": decode") from e
        try:
            open_(keys, dict(ctx, column=ctx["column"] + "x"), sealed, row=v.get("row"))
            raise AssertionError(v["name"] + ": opened under the wrong column")
        except Invalid as e:
            assert str(e) == "AuthenticationFailed"
    n = (len(vectors) + check_schema(schema) + check_index() + check_compound() + check_invalid() + check_keytable()
         + check_keytable_mac2() + check_kek_check() + check_keytable_invalid() + check_json_depth()
         + check_pkcs11() + check_tenant_kek() + check_legacy() + check_kms_context()
         + check_manifest_vectors())
    print(f"{n} passed, 0 failed")


def check_normalizers(path):
    """Compares the Rust normalizers' output in a corpus file with this implementation's."""
    corpus = json.loads(Path(path).read_text(encoding="utf-8", errors="surrogatepass"))
    bad = 0
    for case in corpus:
        got = normalize(case["steps"], case["input"])
        if got != case["output"]:
            bad += 1
            if bad <= 10:
                print("differs:", case["steps"], [f"U+{ord(c):04X}" for c in case["input"]],
                      "rust", [f"U+{ord(c):04X}" for c in case["output"]],
                      "python", [f"U+{ord(c):04X}" for c in got])
    print(f"{len(corpus) - bad} agree, {bad} differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "check"
    if cmd == "normalizers":
        check_normalizers(sys.argv[2])
    else:
        {"generate": lambda: (generate(), generate_index(), generate_compound(), generate_invalid()),
         "check": check,
         "generate-unicode": generate_unicode, "generate-keytable": generate_keytable,
         "generate-keytable-mac2": generate_keytable_mac2,
         "generate-kek-check": generate_kek_check,
         "generate-keytable-invalid": generate_keytable_invalid,
         "generate-json-depth": generate_json_depth,
         "generate-manifest": generate_manifest,
         "generate-schema": generate_schema,
         "generate-providers": lambda: (generate_pkcs11(), generate_tenant_kek(), generate_legacy(),
                                        generate_kms_context())}[cmd]()
