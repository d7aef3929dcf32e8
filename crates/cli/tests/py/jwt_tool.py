"""Independent JWT issuer for the end-to-end tests, written with Python `cryptography` only.

    jwt_tool.py jwks  KEY.pem KID               -> prints a JWKS with the RSA public key
    jwt_tool.py token KEY.pem KID CLAIMS_JSON   -> prints an RS256 JWT over CLAIMS_JSON
"""

import base64
import json
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint_b64u(n: int) -> str:
    return b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def main() -> None:
    cmd, key_path, kid = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if cmd == "jwks":
        pub = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
               "n": uint_b64u(pub.n), "e": uint_b64u(pub.e)}
        print(json.dumps({"keys": [jwk]}))
    elif cmd == "token":
        claims = json.loads(sys.argv[4])
        header = {"alg": "RS256", "typ": "JWT", "kid": kid}
        signing_input = (b64u(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + b64u(json.dumps(claims, separators=(",", ":")).encode()))
        # RS256 = RSASSA-PKCS1-v1_5 with SHA-256 over the ASCII signing input.
        sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        print(signing_input + "." + b64u(sig))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
