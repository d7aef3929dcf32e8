"""Envelope encryption of a file with a Sovra data key, done by Python `cryptography`.

    aesgcm_file.py encrypt KEY_B64  IN OUT   -> OUT = 12-byte nonce || AES-GCM(IN), AAD "sovra-e2e"
    aesgcm_file.py decrypt KEY_FILE IN OUT   -> KEY_FILE holds the raw key bytes
"""

import base64
import os
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

AAD = b"sovra-e2e"


def main() -> None:
    cmd, key_arg, src, dst = sys.argv[1:5]
    with open(src, "rb") as f:
        data = f.read()
    if cmd == "encrypt":
        key = base64.b64decode(key_arg, validate=True)
        nonce = os.urandom(12)
        out = nonce + AESGCM(key).encrypt(nonce, data, AAD)
    elif cmd == "decrypt":
        with open(key_arg, "rb") as f:
            key = f.read()
        out = AESGCM(key).decrypt(data[:12], data[12:], AAD)
    else:
        sys.exit(f"unknown command {cmd}")
    with open(dst, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main()
