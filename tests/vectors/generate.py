#!/usr/bin/env python3
"""Known-answer vectors of Sovra's byte formats (docs/formats.md), computed independently of
the Rust code: Python 3.11 with the `cryptography` package (AES-256-GCM, ChaCha20-Poly1305,
Ed25519), `hashlib`/`hmac` and a Shamir split over GF(256) written here from the textbook.

Every input is fixed, so the output is the same on every run:

    python3 tests/vectors/generate.py          # rewrites tests/vectors/*.json and the seeds
                                               # of fuzz/corpus/audit_journal/
    python3 tests/vectors/generate.py --check  # fails if a committed file differs

The Rust tests that read these files are listed in docs/formats.md.
"""

import base64
import hashlib
import hmac
import json
import struct
import sys
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FUZZ_SEEDS = ROOT / "fuzz" / "corpus" / "audit_journal"


def fixed_bytes(label: str, n: int) -> bytes:
    """n bytes derived from a label: fixed inputs that look random."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


def be32(n: int) -> bytes:
    return struct.pack(">I", n)


def ctx(purpose: bytes, parts) -> bytes:
    """Each of purpose, parts... as a 4-byte big-endian length, then its bytes."""
    return b"".join(be32(len(p)) + p for p in [purpose, *parts])


# --- (a) the ciphertext envelope -------------------------------------------------------------

ALGS = {"aes-256-gcm": (1, AESGCM), "chacha20-poly1305": (2, ChaCha20Poly1305)}


def encode_context(context: dict) -> bytes:
    # Entries in key order (UTF-8 byte order, which is code point order).
    items = sorted(context.items(), key=lambda kv: kv[0].encode())
    out = be32(len(items))
    for k, v in items:
        for part in (k.encode(), v.encode()):
            out += be32(len(part)) + part
    return out


def envelope_case(name, alg, key_version, plaintext, context):
    alg_byte, cls = ALGS[alg]
    key = fixed_bytes(f"envelope-key/{name}", 32)
    nonce = fixed_bytes(f"envelope-nonce/{name}", 12)
    key_id = uuid.UUID(bytes=fixed_bytes(f"envelope-key-id/{name}", 16))
    header = b"sv" + bytes([1, alg_byte]) + key_id.bytes + struct.pack(">I", key_version) + nonce
    assert len(header) == 36
    aad = header + encode_context(context)
    body = cls(key).encrypt(nonce, plaintext, aad)
    return {
        "name": name,
        "alg": alg,
        "key": key.hex(),
        "nonce": nonce.hex(),
        "key_id": str(key_id),
        "key_version": key_version,
        "plaintext": plaintext.hex(),
        "context": context,
        "context_encoding": encode_context(context).hex(),
        "header": header.hex(),
        "aad": aad.hex(),
        "ciphertext": (header + body).hex(),
    }


def envelope_vectors():
    return {
        "description": "Ciphertext envelope (docs/formats.md, section 1): magic 'sv', format 1, "
        "algorithm, key id, key version (u32 BE), nonce, then AEAD(ciphertext||tag) with AAD = "
        "header || context encoding.",
        "cases": [
            envelope_case("aes-empty-context", "aes-256-gcm", 1, b"hello, sovra", {}),
            envelope_case(
                "aes-two-entries",
                "aes-256-gcm",
                7,
                bytes(range(40)),
                # Given out of order: the encoding sorts by key.
                {"env": "prod", "app": "billing"},
            ),
            envelope_case(
                "chacha-empty-plaintext",
                "chacha20-poly1305",
                0xFFFFFFFF,
                b"",
                {"tenant": "gr\u00fcn", "": "empty key"},
            ),
        ],
    }


# --- (b) key wrapping and its AAD ------------------------------------------------------------


def wrap(wrapping_key: bytes, nonce: bytes, secret: bytes, aad: bytes) -> bytes:
    return b"\x01" + nonce + AESGCM(wrapping_key).encrypt(nonce, secret, aad)


def wrap_case(name, purpose, parts, secret_len, caller):
    wrapping_key = fixed_bytes(f"wrap-key/{name}", 32)
    nonce = fixed_bytes(f"wrap-nonce/{name}", 12)
    secret = fixed_bytes(f"wrap-secret/{name}", secret_len)
    aad = ctx(purpose.encode(), parts)
    return {
        "name": name,
        "caller": caller,
        "purpose": purpose,
        "parts": [p.hex() for p in parts],
        "aad": aad.hex(),
        "wrapping_key": wrapping_key.hex(),
        "nonce": nonce.hex(),
        "secret": secret.hex(),
        "wrapped": wrap(wrapping_key, nonce, secret, aad).hex(),
    }


MATERIAL_KEY_ID = uuid.UUID("0190f5a8-3c4e-7b2a-9d61-5e8f0a1b2c3d")


def wrap_vectors():
    return {
        "description": "Key wrapping (docs/formats.md, section 2): 0x01 || nonce || "
        "AES-256-GCM(secret) with AAD = ctx(purpose, parts).",
        "cases": [
            wrap_case("root-key", "sovra/root-key/v1", [], 32, "seal::root_key_aad()"),
            wrap_case(
                "org-kek",
                "sovra/org-kek/v1",
                [b"org-1", struct.pack(">I", 3)],
                32,
                "hierarchy::kek_aad(\"org-1\", 3)",
            ),
            wrap_case(
                "key-material",
                "sovra/key-material/v1",
                [b"org-1", MATERIAL_KEY_ID.bytes, struct.pack(">I", 2), b"aes-256-gcm"],
                32,
                f"hierarchy::material_aad(key org-1/{MATERIAL_KEY_ID} aes-256-gcm, 2)",
            ),
            wrap_case(
                "audit-signing-key",
                "sovra/audit-key/v1",
                [b"signing"],
                48,
                "audit::keys::aad(\"signing\")",
            ),
            wrap_case(
                "audit-hmac-key", "sovra/audit-key/v1", [b"hmac"], 32, "audit::keys::aad(\"hmac\")"
            ),
        ],
        "context_collisions": {
            "description": "ctx('p', ['ab', 'c']) and ctx('p', ['a', 'bc']) differ",
            "ab_c": ctx(b"p", [b"ab", b"c"]).hex(),
            "a_bc": ctx(b"p", [b"a", b"bc"]).hex(),
        },
    }


# --- (c) unseal shares: Shamir over GF(256) --------------------------------------------------


def gf_mul(a: int, b: int) -> int:
    """Multiplication in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1 (0x11B, the AES field)."""
    p = 0
    while b:
        if b & 1:
            p ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return p


def shamir_split(secret: bytes, n: int, t: int, label: str):
    """Share x (1..n) is x || f_0(x) || f_1(x) ..., f_i of degree t-1 with f_i(0) = secret[i]."""
    coefficients = [
        [s] + list(fixed_bytes(f"{label}/coefficients/{i}", t - 1)) for i, s in enumerate(secret)
    ]
    shares = []
    for x in range(1, n + 1):
        ys = []
        for coeffs in coefficients:
            y = 0
            for c in reversed(coeffs):  # Horner
                y = gf_mul(y, x) ^ c
            ys.append(y)
        shares.append(bytes([x] + ys))
    return coefficients, shares


def shamir_vectors():
    unseal_key = fixed_bytes("unseal-key", 32)
    root_key = fixed_bytes("root-key", 32)
    root_nonce = fixed_bytes("root-key-nonce", 12)
    root_aad = ctx(b"sovra/root-key/v1", [])
    coefficients, shares = shamir_split(unseal_key, 5, 3, "shamir-3-of-5")
    _, one_of_three = shamir_split(unseal_key, 3, 1, "shamir-1-of-3")
    wrapped_root_key = wrap(unseal_key, root_nonce, root_key, root_aad)

    def commitment(share: bytes) -> str:
        return hashlib.sha256(
            b"sovra/unseal-share-commitment/v1\0" + be32(len(wrapped_root_key))
            + wrapped_root_key + share
        ).hexdigest()

    return {
        "description": "Unseal shares (docs/formats.md, section 3): id || y bytes over "
        "GF(2^8)/0x11B; on the wire standard base64 with padding. The root key is wrapped "
        "under the combined unseal key (wrap format, purpose sovra/root-key/v1).",
        "unseal_key": unseal_key.hex(),
        "splits": [
            {
                "shares": 5,
                "threshold": 3,
                "coefficients": [bytes(c).hex() for c in coefficients],
                "share_bytes": [s.hex() for s in shares],
                "share_base64": [base64.b64encode(s).decode() for s in shares],
            },
            {
                "shares": 3,
                "threshold": 1,
                "coefficients": [bytes([s]).hex() for s in unseal_key],
                "share_bytes": [s.hex() for s in one_of_three],
                "share_base64": [base64.b64encode(s).decode() for s in one_of_three],
            },
        ],
        "root_key": root_key.hex(),
        "wrapped_root_key": wrapped_root_key.hex(),
        "share_commitments": [commitment(s) for s in shares],
    }


# --- (d) the audit chain ---------------------------------------------------------------------

GENESIS = "0" * 64
AUDIT_HMAC_KEY = fixed_bytes("audit-hmac-key", 32)
AUDIT_SIGNING_SEED = fixed_bytes("audit-signing-seed", 32)


def keyed_hash(field: str, value: bytes) -> str:
    msg = ctx(b"sovra/audit-hash/v1", [field.encode(), value])
    return hmac.new(AUDIT_HMAC_KEY, msg, hashlib.sha256).hexdigest()


def optional(value):
    if value is None:
        return be32(1) + b"\x00"
    v = value.encode()
    return be32(1 + len(v)) + b"\x01" + v


def event_encoding(ev: dict) -> bytes:
    def part(b: bytes) -> bytes:
        return be32(len(b)) + b

    hashed = b"".join(
        ctx(b"", [k.encode(), v.encode()])
        for k, v in sorted(ev.get("hashed", {}).items(), key=lambda kv: kv[0].encode())
    )
    return (
        part(b"sovra/audit-event/v1")
        + part(struct.pack(">q", ev["time_ms"]))
        + optional(ev["org"])
        + part(ev["actor"].encode())
        + part(ev["auth_method"].encode())
        + optional(ev["cert_fingerprint"])
        + part(ev["action"].encode())
        + part(ev["resource"].encode())
        + part(ev["outcome"].encode())
        + optional(ev["error_code"])
        + part(ev["request_id"].encode())
        + part(ev["source"].encode())
        + part(hashed)
    )


def link_encoding(seq: int, body_digest: str, prev_hash: str) -> bytes:
    return ctx(
        b"sovra/audit-link/v1", [struct.pack(">Q", seq), body_digest.encode(), prev_hash.encode()]
    )


def event(seq, time_ms, org, actor, auth_method, cert, action, resource, outcome, error, rid,
          source, hashed):
    # The field order of the Rust struct, which is also its JSON order; `hashed` is left out
    # when empty, as serde does.
    ev = {
        "seq": seq,
        "time_ms": time_ms,
        "org": org,
        "actor": actor,
        "auth_method": auth_method,
        "cert_fingerprint": cert,
        "action": action,
        "resource": resource,
        "outcome": outcome,
        "error_code": error,
        "request_id": rid,
        "source": source,
    }
    if hashed:
        ev["hashed"] = dict(sorted(hashed.items(), key=lambda kv: kv[0].encode()))
    return ev


def audit_chain():
    """Three events linked from the genesis hash, with their encodings."""
    token = b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    context = encode_context({"app": "billing"})
    raw = [
        event(1, 1_764_000_000_123, "org-1", "https://idp.example#alice", "jwt", None,
              "keys.encrypt", f"key/{MATERIAL_KEY_ID}", "success", None, "req-1", "127.0.0.1",
              {"token": keyed_hash("token", token), "context": keyed_hash("context", context)}),
        # Absent and empty differ; a negative time; no keyed hashes.
        event(2, -5, None, "", "none", "", "decrypt", "none", "failure", "bad_ciphertext", "",
              "::1", {}),
        event(3, 1_764_000_000_999, "org-2", "dev-token#dev", "dev-token", "ab" * 32,
              "sys.seal", "sys", "success", None, "req-3", "10.0.0.7", {}),
    ]
    prev = GENESIS
    events = []
    for ev in raw:
        body = event_encoding(ev)
        digest = hashlib.sha256(body).hexdigest()
        link = link_encoding(ev["seq"], digest, prev)
        h = hashlib.sha256(link).hexdigest()
        sealed = dict(ev, prev_hash=prev, hash=h)
        events.append({
            "event": sealed,
            "event_encoding": body.hex(),
            "body_digest": digest,
            "link_encoding": link.hex(),
        })
        prev = h
    return events, {"token": token.hex(), "context": context.hex()}


def ed25519_key():
    return Ed25519PrivateKey.from_private_bytes(AUDIT_SIGNING_SEED)


def audit_vectors():
    events, hashed_inputs = audit_chain()
    key = ed25519_key()
    head = events[-1]["event"]["hash"]
    seq, time_ms = 3, 1_764_000_001_000
    signed = ctx(
        b"sovra/audit-checkpoint/v1",
        [struct.pack(">Q", seq), head.encode(), struct.pack(">q", time_ms)],
    )
    signature = base64.b64encode(key.sign(signed)).decode()
    checkpoint = {"seq": seq, "head": head, "time_ms": time_ms, "signature": signature}
    export = [json.dumps({"type": "event", **e["event"]}, separators=(",", ":")) for e in events]
    export.append(json.dumps({"type": "checkpoint", **checkpoint}, separators=(",", ":")))
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "description": "Audit chain (docs/formats.md, section 4): event encodings, body "
        "digests, link hashes from the genesis hash, keyed hashes and a signed checkpoint.",
        "genesis": GENESIS,
        "events": events,
        "keyed_hashes": {
            "hmac_key": AUDIT_HMAC_KEY.hex(),
            "cases": [
                {"field": f, "value": hashed_inputs[f], "message": ctx(
                    b"sovra/audit-hash/v1", [f.encode(), bytes.fromhex(hashed_inputs[f])]).hex(),
                 "hash": keyed_hash(f, bytes.fromhex(hashed_inputs[f]))}
                for f in ("token", "context")
            ],
        },
        "checkpoint": {
            "signing_key_pkcs8": pkcs8.hex(),
            "public_key_spki": spki.hex(),
            "signed_bytes": signed.hex(),
            **checkpoint,
        },
        "export": export,
    }


# --- (e) the audit journal file --------------------------------------------------------------

JOURNAL_MAGIC = b"SOVRAJ02"
FIRST_FRAME = 4096


def journal_header(generation: int) -> bytes:
    h = JOURNAL_MAGIC + struct.pack(">Q", generation)
    return h + hashlib.sha256(h).digest()


def payload(events) -> bytes:
    # serde_json's compact encoding of a Vec<AuditEvent>.
    return json.dumps(events, separators=(",", ":"), ensure_ascii=False).encode()


def frame(generation: int, p: bytes) -> bytes:
    g = struct.pack(">Q", generation)
    return be32(len(p)) + hashlib.sha256(g + p).digest() + g + p


def v1_frame(p: bytes) -> bytes:
    return be32(len(p)) + hashlib.sha256(p).digest() + p


def journal_vectors(chain, checkpoint):
    evs = [e["event"] for e in chain]
    p1, p2 = payload(evs[:2]), payload(evs[2:])
    f1, f2 = frame(1, p1), frame(1, p2)
    v2 = journal_header(1).ljust(FIRST_FRAME, b"\x00") + f1 + f2
    # A torn last frame: its header and part of its payload landed, zeros after.
    torn = journal_header(1).ljust(FIRST_FRAME, b"\x00") + f1 + f2[: len(f2) // 2]
    torn = torn + b"\x00" * (len(v2) - len(torn))
    # Generation 2 after the journal was emptied: the generation-1 frames are stale, and a new
    # frame of generation 2 overwrote the first of them.
    f3 = frame(2, p2)
    regenerated = journal_header(2).ljust(FIRST_FRAME, b"\x00") + f3 + (f1 + f2)[len(f3):]
    v1 = v1_frame(p1) + v1_frame(p2)
    # The writer signs each frame's head into the frame, as its last item.
    p2_signed = payload(evs[2:] + [checkpoint])
    f2_signed = frame(1, p2_signed)
    signed = journal_header(1).ljust(FIRST_FRAME, b"\x00") + f1 + f2_signed
    # A head in the first frame that signs an event of the second: corrupt.
    misplaced = journal_header(1).ljust(FIRST_FRAME, b"\x00") + frame(1, payload(evs[:2] + [checkpoint])) + f2
    return {
        "description": "Audit journal files (docs/formats.md, section 5). Events and the signed "
        "head are those of audit.json.",
        "header_generation_1": journal_header(1).hex(),
        "header_generation_2": journal_header(2).hex(),
        "frames": [
            {"generation": 1, "events": [1, 2], "payload": p1.hex(), "frame": f1.hex()},
            {"generation": 1, "events": [3], "payload": p2.hex(), "frame": f2.hex()},
        ],
        "files": [
            {"name": "v2", "bytes": v2.hex(), "events": [1, 2, 3], "end": len(v2)},
            {"name": "v2_torn", "bytes": torn.hex(), "events": [1, 2],
             "end": FIRST_FRAME + len(f1)},
            {"name": "v2_generation_2", "bytes": regenerated.hex(), "events": [3],
             "end": FIRST_FRAME + len(f3)},
            {"name": "v1", "bytes": v1.hex(), "events": [1, 2, 3], "end": len(v1)},
            {"name": "v2_signed", "bytes": signed.hex(), "events": [1, 2, 3], "end": len(signed),
             "checkpoints": [3]},
        ],
        "signed_frame": {"events": [3], "payload": p2_signed.hex(), "frame": f2_signed.hex()},
        "corrupt_files": [
            {"name": "head_before_its_event", "bytes": misplaced.hex(), "offset": FIRST_FRAME},
        ],
    }, {"raw_v2": v2, "raw_v2_torn": torn, "raw_v2_generation_2": regenerated, "raw_v1": v1,
        "raw_v2_signed": signed}


# --- (f) row MACs ---------------------------------------------------------------------------


def hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with an empty salt, from hmac/hashlib (not Sovra's aws-lc-rs)."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def row_optional(value):
    return b"" if value is None else b"\x01" + value


def key_row(row: dict) -> bytes:
    i64 = lambda n: struct.pack(">q", n)
    return ctx(b"sovra/row/key/v1", [
        uuid.UUID(row["id"]).bytes,
        row["org_id"].encode(),
        row["owner"].encode(),
        row["name"].encode(),
        row["key_type"].encode(),
        row_optional(None if row["description"] is None else row["description"].encode()),
        row["state"].encode(),
        be32(row["latest_version"]),
        be32(row["min_decryption_version"]),
        i64(row["created_at"]),
        row_optional(None if row["rotated_at"] is None else i64(row["rotated_at"])),
        row_optional(None if row["deletion_date"] is None else i64(row["deletion_date"])),
        struct.pack(">Q", row["revision"]),
    ])


def identity_row(row: dict) -> bytes:
    return ctx(b"sovra/row/identity/v1", [
        row["org_id"].encode(),
        row["id"].encode(),
        row["kind"].encode(),
        ",".join(row["roles"]).encode(),
        row["status"].encode(),
        row["auth_source"].encode(),
        row["issuer"].encode(),
        row["subject"].encode(),
        struct.pack(">q", row["created_at"]),
        struct.pack(">Q", row["revision"]),
    ])


def grant_row(row: dict) -> bytes:
    constraint = None
    if row["constraint"] is not None:
        kind, context = row["constraint"]
        parts = [kind.encode()]
        for k in sorted(context, key=str.encode):
            parts += [k.encode(), context[k].encode()]
        constraint = ctx(b"constraint", parts)
    expires = None if row["expires_at"] is None else struct.pack(">q", row["expires_at"])
    return ctx(b"sovra/row/grant/v1", [
        uuid.UUID(row["id"]).bytes,
        row["org_id"].encode(),
        uuid.UUID(row["key_id"]).bytes,
        row["grantee_type"].encode(),
        row["grantee"].encode(),
        ",".join(row["operations"]).encode(),
        row_optional(constraint),
        row_optional(expires),
        row["created_by"].encode(),
        struct.pack(">q", row["created_at"]),
    ])


def row_mac_vectors():
    root = fixed_bytes("row-mac/root", 32)
    mac_key = hkdf_sha256(root, b"sovra/row-mac/v1", 32)
    base = {
        "id": "0190f5a8-3c4e-7b2a-9d61-5e8f0a1b2c3d", "org_id": "acme",
        "owner": "https://issuer.example#alice", "name": "payments", "key_type": "aes-256-gcm",
        "description": None, "state": "enabled", "latest_version": 1,
        "min_decryption_version": 1, "created_at": 1767225600000, "rotated_at": None,
        "deletion_date": None, "revision": 1,
    }
    rows = [
        ("created", base),
        ("pending_deletion", {**base, "description": "", "state": "pending_deletion",
                              "latest_version": 3, "min_decryption_version": 2,
                              "rotated_at": 1767312000000, "deletion_date": 1769904000000,
                              "revision": 7}),
        ("described", {**base, "description": "card data", "key_type": "rsa-3072",
                       "state": "disabled", "revision": 2}),
    ]
    cases = []
    for name, row in rows:
        message = key_row(row)
        cases.append({"name": name, "row": row, "message": message.hex(),
                      "mac": hmac.new(mac_key, message, hashlib.sha256).hexdigest()})
    mac = lambda m: hmac.new(mac_key, m, hashlib.sha256).hexdigest()
    person = {
        "org_id": "acme", "id": "https://issuer.example#alice", "kind": "user", "roles": [],
        "status": "active", "auth_source": "jwt", "issuer": "https://issuer.example",
        "subject": "alice", "created_at": 1767225600000, "revision": 1,
    }
    identities = [
        ("provisioned", person),
        ("service_disabled", {**person, "id": "https://issuer.example#ci", "subject": "ci",
                              "kind": "service_account", "roles": ["auditor", "user"],
                              "status": "disabled", "revision": 4}),
    ]
    grant = {
        "id": "0190f5a8-3c4e-7b2a-9d61-000000000001", "org_id": "acme",
        "key_id": base["id"], "grantee_type": "identity",
        "grantee": "https://issuer.example#bob", "operations": ["encrypt"], "constraint": None,
        "expires_at": None, "created_by": "https://issuer.example#alice",
        "created_at": 1767225600000,
    }
    grants = [
        ("plain", grant),
        ("constrained", {**grant, "grantee_type": "role", "grantee": "user",
                         "operations": ["decrypt", "datakey"],
                         "constraint": ["subset", {"tenant": "t1", "app": "billing"}],
                         "expires_at": 1767312000000}),
        ("empty_equals", {**grant, "constraint": ["equals", {}]}),
    ]
    return {
        "description": "Row MACs (docs/formats.md, section 6): the row-MAC key is HKDF-SHA256 "
        "of the root key (empty salt, info sovra/row-mac/v1), a key row's MAC is HMAC-SHA256 of "
        "its columns; identity and grant rows likewise.",
        "root_key": root.hex(), "row_mac_key": mac_key.hex(), "cases": cases,
        "identities": [{"name": n, "row": r, "message": identity_row(r).hex(),
                        "mac": mac(identity_row(r))} for n, r in identities],
        "grants": [{"name": n, "row": r, "message": grant_row(r).hex(),
                    "mac": mac(grant_row(r))} for n, r in grants],
    }


# --- output ----------------------------------------------------------------------------------


def outputs():
    audit = audit_vectors()
    head = {k: audit["checkpoint"][k] for k in ("seq", "head", "time_ms", "signature")}
    journal, files = journal_vectors(audit["events"], head)
    out = {}
    for name, data in [
        ("envelope.json", envelope_vectors()),
        ("wrap.json", wrap_vectors()),
        ("shamir.json", shamir_vectors()),
        ("audit.json", audit),
        ("journal.json", journal),
        ("row_mac.json", row_mac_vectors()),
    ]:
        out[HERE / name] = (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode()
    # Seeds of the audit_journal fuzz target: mode byte 0 (the file as is) ...
    for name, data in files.items():
        out[FUZZ_SEEDS / name] = b"\x00" + data
    # ... and mode 1 (payloads framed by the target, 0xFF between them, a raw tail).
    evs = [e["event"] for e in audit["events"]]
    out[FUZZ_SEEDS / "framed_chain"] = b"\x01" + payload(evs[:2]) + b"\xff" + payload(evs[2:]) + b"\xff"
    out[FUZZ_SEEDS / "framed_torn_tail"] = b"\x01" + payload(evs[:2]) + b"\xff" + frame(1, payload(evs[2:]))[:60]
    return out


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for path, data in outputs().items():
        if check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    if stale:
        sys.exit("stale vectors: " + ", ".join(stale))


if __name__ == "__main__":
    main()
