#!/usr/bin/env python3
"""An independent implementation of ciphertext format v1, written from docs/FORMAT.md alone.

    reference.py check      open every vector in v1.json and re-seal it with its nonce, and
                            recompute every blind index in blind_index_v1.json: all must
                            match byte for byte (CI runs this)
    reference.py generate   write both files from the cases below (only when adding vectors:
                            existing vectors are frozen and must never change)

Needs the `cryptography` package.
"""
import json
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DOMAIN = b"encrypted-types/v1"
HERE = Path(__file__).resolve().parent
VECTORS = HERE / "v1.json"
INDEX_VECTORS = HERE / "blind_index_v1.json"


def s(text: str) -> bytes:
    raw = text.encode("utf-8")
    assert len(raw) <= 0xFFFF
    return struct.pack(">H", len(raw)) + raw


def aad(header6: bytes, table: str, column: str, tenant, value_type: str) -> bytes:
    t = b"\x00" if tenant is None else b"\x01" + s(tenant)
    return DOMAIN + header6 + s(table) + s(column) + t + s(value_type)


def seal(key: bytes, key_id: int, nonce: bytes, ctx: dict, plaintext: bytes) -> bytes:
    header6 = bytes([1, 1]) + struct.pack(">I", key_id)
    ct_tag = AESGCM(key).encrypt(nonce, plaintext, aad(header6, **ctx))
    return header6 + nonce + ct_tag


def open_(keys: dict, ctx: dict, sealed: bytes) -> bytes:
    if not sealed or sealed[0] != 1:
        raise ValueError("UnsupportedVersion")
    if len(sealed) < 34:
        raise ValueError("Truncated")
    if sealed[1] != 1:
        raise ValueError("UnsupportedSuite")
    (key_id,) = struct.unpack(">I", sealed[2:6])
    if key_id not in keys:
        raise ValueError("UnknownKeyId")
    return AESGCM(keys[key_id]).decrypt(sealed[6:18], sealed[18:], aad(sealed[:6], **ctx))


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
]


# --- Blind indexes (FORMAT.md section 7) ---------------------------------------------------

import hashlib
import hmac
import unicodedata

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def normalize(steps, text: str) -> str:
    for step in steps:
        if step == "trim":
            text = text.strip()
        elif step == "lowercase":
            text = text.lower()
        elif step == "email":
            text = text.strip().lower()
        elif step == "digits":
            text = "".join(c for c in unicodedata.normalize("NFKC", text) if c in "0123456789")
        elif step == "casefold":
            text = unicodedata.normalize("NFKC", text).casefold()
        else:
            raise ValueError(step)
    return text


def blind_index(root: bytes, table, column, tenant, value_type, version, bits, steps, value) -> bytes:
    t = b"\x00" if tenant is None else b"\x01" + s(tenant)
    info = b"encrypted-types/blind-index/v1" + s(table) + s(column) + t + s(value_type) + struct.pack(">I", version)
    info += struct.pack(">H", bits) + bytes([len(steps)]) + b"".join(bytes([len(n)]) + n.encode() for n in steps)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root)
    data = normalize(steps, value).encode() if value_type == "string" else encode(value_type, value)
    full = hmac.new(key, data, hashlib.sha256).digest()
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


def generate():
    out = []
    for name, key, key_id, nb, table, column, tenant, vt, value in CASES:
        ctx = dict(table=table, column=column, tenant=tenant, value_type=vt)
        nonce = bytes([nb] * 12)
        pt = encode(vt, value)
        out.append({
            "name": name, "key": key.hex(), "key_id": key_id, "nonce": nonce.hex(),
            "table": table, "column": column, "tenant": tenant, "value_type": vt,
            "value": value, "plaintext": pt.hex(), "sealed": seal(key, key_id, nonce, ctx, pt).hex(),
        })
    VECTORS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} vectors to {VECTORS}")


def check():
    vectors = json.loads(VECTORS.read_text())
    for v in vectors:
        ctx = dict(table=v["table"], column=v["column"], tenant=v["tenant"], value_type=v["value_type"])
        key = bytes.fromhex(v["key"])
        pt = bytes.fromhex(v["plaintext"])
        assert encode(v["value_type"], v["value"]) == pt, v["name"] + ": plaintext encoding"
        sealed = bytes.fromhex(v["sealed"])
        assert seal(key, v["key_id"], bytes.fromhex(v["nonce"]), ctx, pt) == sealed, v["name"] + ": seal"
        assert open_({v["key_id"]: key}, ctx, sealed) == pt, v["name"] + ": open"
        wrong = dict(ctx, column=ctx["column"] + "x")
        try:
            open_({v["key_id"]: key}, wrong, sealed)
            raise AssertionError(v["name"] + ": opened under the wrong column")
        except Exception as e:  # cryptography raises InvalidTag
            if isinstance(e, AssertionError):
                raise
    n = len(vectors) + check_index()
    print(f"{n} passed, 0 failed")


if __name__ == "__main__":
    {"generate": lambda: (generate(), generate_index()), "check": check}[sys.argv[1] if len(sys.argv) > 1 else "check"]()
