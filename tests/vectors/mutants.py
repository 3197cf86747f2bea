#!/usr/bin/env python3
"""The mistakes an implementer could make that no vector caught before issue 29, each made in
the reference one at a time: every one must fail `reference.check()`, and the vector that
catches it is printed. CI runs this after `reference.py check`.

    python3 tests/vectors/mutants.py
"""
import importlib
import struct
import sys
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

# Default_Ignorable_Code_Point (DerivedCoreProperties.txt), the ranges a reader that drops
# them (NFKC_Casefold does) would remove.
IGNORABLE = [(0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
             (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
             (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
             (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
             (0xE0000, 0xE0FFF)]


def drop_ignorables(text: str) -> str:
    return "".join(c for c in text if not any(a <= ord(c) <= b for a, b in IGNORABLE))


def nfkc_unicode_16(text: str) -> str:
    """NFKC as a reader on Unicode 16.0 tables computes it for the outlined digits (U+1CCF0..9,
    <font> 0030..0039), which 14.0.0 does not assign."""
    return reference.nfkc("".join(chr(0x30 + ord(c) - 0x1CCF0) if 0x1CCF0 <= ord(c) <= 0x1CCF9 else c
                                  for c in text))


def with_step(name, impl):
    """`reference.normalize` with step `name` computed by `impl` instead."""
    original = reference.normalize

    def normalize(steps, text):
        for step in steps:
            text = impl(text) if step == name else original([step], text)
        return text
    return normalize


def tenant_as_integer(text: str) -> bytes:
    """A reader that encodes a decimal tenant as an 8-byte integer instead of its text."""
    try:
        return struct.pack(">H", 8) + struct.pack(">q", int(text))
    except ValueError:
        return ORIGINAL_S(text)


ORIGINAL_S = reference.s


def no_leap_second(value_type, p):
    if value_type in ("timestamp", "timestamptz") and len(p) == 12:
        if struct.unpack(">qI", p)[1] >= 10**9:
            raise reference.Invalid("InvalidPlaintext")
    return ORIGINAL_DECODE(value_type, p)


ORIGINAL_DECODE = reference.decode


def index_of_text(root, table, column, tenant, value_type, version, bits, steps, value):
    """A reader that indexes a non-string value's text form instead of its encoding (section 7)."""
    if value_type in ("string", "i64", "date"):
        return ORIGINAL_INDEX(root, table, column, tenant, value_type, version, bits, steps, value)
    return ORIGINAL_INDEX(root, table, column, tenant, "string", version, bits, [], str(value))


ORIGINAL_INDEX = reference.blind_index


def mac_of_wrapping_keys_only(m, r):
    """A reader that verifies the MAC of wrapping keys' records and trusts the other records."""
    return True if r["purpose"] != "wrapping" else ORIGINAL_VERIFY(m, r)


ORIGINAL_VERIFY = reference.verify_record_mac

def mac_of_pkcs11_label(orig):
    """A reader that MACs a `pkcs11:` reference as its label alone."""
    return lambda m, r: orig(m, dict(r, kek_ref=r["kek_ref"].removeprefix("pkcs11:")))


def untenanted_wrapping_keys(orig):
    """A reader that wraps every wrapping key with no tenant in its context (section 2)."""
    return lambda tenant, purpose, key_id: orig(None if purpose == "wrapping" else tenant, purpose, key_id)


def empty_tenant_for_none(orig):
    """A reader that gives a key of no tenant the pair `tenant` = "" (section 2.4)."""
    return lambda tenant, purpose, key_id: orig("" if tenant is None else tenant, purpose, key_id)


def hex_key_id(orig):
    return lambda tenant, purpose, key_id: dict(orig(tenant, purpose, key_id), key_id=f"{key_id:x}")


def generation_rules_everywhere(orig):
    """A reader that applies section 5 step 3 to a table from before the hierarchy too."""
    return lambda recs, unavailable, hierarchical: orig(recs, unavailable, True)


def legacy_needs_check_value(orig):
    def open_by_kek(kek, r):
        if r["check_value"] is None:
            raise reference.Refused("KeyRecord", r["key_id"])
        return orig(kek, r)
    return open_by_kek


def key_before_suite(orig):
    """Section 5 with the key looked up before the suite byte is checked."""
    def open_(keys, ctx, sealed, destroyed=frozenset(), row=None):
        if len(sealed) >= 34 and sealed[0] == 1:
            (key_id,) = struct.unpack(">I", sealed[2:6])
            if key_id not in keys and key_id not in destroyed:
                raise reference.Invalid("UnknownKeyId")
        return orig(keys, ctx, sealed, destroyed, row)
    return open_


def binding_after_the_tag(orig):
    """Section 5 with the row-binding check after decryption: a bad tag is reported first."""
    def open_(keys, ctx, sealed, destroyed=frozenset(), row=None):
        try:
            return orig(keys, ctx, sealed, destroyed, row)
        except reference.Invalid as e:
            if str(e) != "RowBinding":
                raise
            (key_id,) = struct.unpack(">I", sealed[2:6])
            key, tenant = keys[key_id]
            extra = reference.row_binding(row) if row is not None else b""
            try:
                reference.SUITES[sealed[1]](key).decrypt(
                    sealed[6:18], sealed[18:], reference.aad(sealed[:6], **dict(ctx, tenant=tenant)) + extra)
            except reference.InvalidTag:
                raise reference.Invalid("AuthenticationFailed") from None
            raise
    return open_


def tenant_before_decoding(table_, column, value_type, row_tenant, sealed, keys, destroyed, row):
    plaintext = reference.open_(keys, dict(table=table_, column=column, value_type=value_type), sealed,
                                destroyed, row)
    (key_id,) = struct.unpack(">I", sealed[2:6])
    if keys[key_id][1] != row_tenant:
        raise reference.Invalid("TenantMismatch")
    return reference.decode(value_type, plaintext)


def manifest_without_step_5(check_manifest):
    """A reader that checks each tenant's row against its records but never adds the rows up
    to the deployment row."""
    def check(macs, rows, records, tenants=None, min_epoch=None):
        if tenants is None:
            tenants = sorted({r["tenant"] for r in records if r["tenant"] is not None})
        return check_manifest(macs, rows, records, tenants, min_epoch)
    return check


def digest_of_ids(records):
    """A group digest over the key ids alone: an older copy of a record has the same id."""
    h = reference.hashlib.sha256(b"encrypted-types/keytable/manifest/group/v1")
    for r in sorted(records, key=lambda r: r["key_id"]):
        h.update(struct.pack(">q", r["key_id"]))
    return h.digest()


MUTANTS = [
    ("casefold without its NFKC step", "normalize",
     lambda: with_step("casefold", lambda t: reference.runs(t, str.casefold, True))),
    ("casefold with NFKC repeated afterwards", "normalize",
     lambda: with_step("casefold", lambda t: reference.runs(
         t, lambda r: reference.nfkc(reference.nfkc(r).casefold()), True))),
    ("casefold dropping default-ignorable code points", "normalize",
     lambda: with_step("casefold", lambda t: drop_ignorables(
         reference.runs(t, lambda r: reference.nfkc(r).casefold(), True)))),
    ("digits on Unicode 16.0 tables without the unassigned-in-14.0.0 rule", "normalize",
     lambda: with_step("digits", lambda t: "".join(c for c in nfkc_unicode_16(t)
                                                    if c in reference.ASCII_DIGITS))),
    ("no leap second at all", "decode", lambda: no_leap_second),
    ("JSON depth limit of 126", "JSON_MAX_DEPTH", lambda: 126),
    ("date bounds one day inward", "DAY_MIN", lambda: reference.DAY_MIN + 1),
    ("date bounds one day inward (upper)", "DAY_MAX", lambda: reference.DAY_MAX - 1),
    ("blind index over a value's text instead of its encoding", "blind_index", lambda: index_of_text),
    ("integer tenant encoded as an integer", "s", lambda: tenant_as_integer),
    ("key-table MACs checked on wrapping keys only", "verify_record_mac", lambda: mac_of_wrapping_keys_only),
    ("a pkcs11: record MACed with its label alone", "record_mac_v2",
     lambda: mac_of_pkcs11_label(reference.record_mac_v2)),
    ("a PKCS#11 key's check value computed like a local KEK's", "pkcs11_check_value",
     lambda: reference.kek_check),
    ("a tenant's own wrapping key wrapped with no tenant in its context", "kek_aad",
     lambda: untenanted_wrapping_keys(reference.kek_aad)),
    ("KMS context: tenant \"\" for a key of no tenant", "aws_context",
     lambda: empty_tenant_for_none(reference.aws_context)),
    ("KMS context: the key id in hexadecimal", "aws_context", lambda: hex_key_id(reference.aws_context)),
    ("generation rules applied to a table from before the hierarchy", "check_groups",
     lambda: generation_rules_everywhere(reference.check_groups)),
    ("a check value required of a key from before the hierarchy", "open_by_kek",
     lambda: legacy_needs_check_value(reference.open_by_kek)),
    ("the key looked up before the suite byte is checked", "open_", lambda: key_before_suite(reference.open_)),
    ("the row binding checked after the tag", "open_", lambda: binding_after_the_tag(reference.open_)),
    ("the tenant compared before the plaintext is decoded", "open_row",
     lambda: lambda keys, destroyed, table_, column, vt, tenant, sealed, row=None: tenant_before_decoding(
         table_, column, vt, tenant, sealed, keys, destroyed, row)),
    ("manifest: a full load that never adds the rows up to the deployment row", "check_manifest",
     lambda: manifest_without_step_5(reference.check_manifest)),
    ("manifest: a group digest over the key ids alone", "group_digest", lambda: digest_of_ids),
]


def main():
    survived = 0
    for name, attr, make in MUTANTS:
        importlib.reload(reference)
        globals().update(ORIGINAL_S=reference.s, ORIGINAL_DECODE=reference.decode,
                         ORIGINAL_INDEX=reference.blind_index, ORIGINAL_VERIFY=reference.verify_record_mac)
        setattr(reference, attr, make())
        try:
            reference.check()
            print(f"SURVIVED  {name}")
            survived += 1
        except (AssertionError, reference.Invalid, reference.Refused, ValueError, KeyError) as e:
            print(f"caught    {name}: {type(e).__name__} {str(e)[:100]}")
    importlib.reload(reference)
    print(f"{len(MUTANTS) - survived} of {len(MUTANTS)} mistakes caught")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    assert unicodedata.unidata_version == reference.UNICODE_VERSION
    main()
