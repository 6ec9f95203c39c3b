"""The firmware's Ed25519 verifier (targets/firmware/es_ed25519.c, es_sha512.c) against RFC 8032
and Python's ``cryptography``.

The C code runs in a small driver (ed25519_verify_main.c) built with ASan/UBSan; every case of a
test goes through one process. Status numbers are es_ed25519_status: 0 OK, 1 BAD_S, 2 BAD_R,
3 BAD_PUBLIC_KEY, 4 MISMATCH.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import session_tmpdir

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the verifier")

FIRMWARE = Path(__file__).resolve().parents[2] / "targets" / "firmware"
OK, BAD_S, BAD_R, BAD_KEY, MISMATCH = range(5)
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493

# RFC 8032 section 7.1: (secret key, public key, message, signature), typed in from the RFC
RFC8032_VECTORS = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    ("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
     "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"),
]


def _verifier() -> Path:
    exe = session_tmpdir("es_ed25519_") / "ed25519-verify"
    if not exe.exists():
        subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-g",
                        "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-I", str(FIRMWARE),
                        str(Path(__file__).with_name("ed25519_verify_main.c")), str(FIRMWARE / "es_ed25519.c"),
                        str(FIRMWARE / "es_sha512.c"), "-o", str(exe)], check=True)
    return exe


def run_cases(cases: list[tuple[bytes, bytes, bytes]]) -> list[int]:
    """es_ed25519_verify's status for each (public key, signature, message)."""
    text = "".join(f"{k.hex()} {s.hex()} {m.hex() or '-'}\n" for k, s, m in cases)
    proc = subprocess.run([str(_verifier())], input=text, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [int(v) for v in proc.stdout.split()]


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _keys_and_messages(count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        key = Ed25519PrivateKey.from_private_bytes(rng.bytes(32))
        message = rng.bytes(int(rng.integers(0, 600)))
        yield key, message


def test_rfc8032_vectors_verify():
    cases = []
    for secret, public, message, signature in RFC8032_VECTORS:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
        # the typed-in vectors agree with cryptography (a typo would show here, not as a C bug)
        assert _raw_public(key).hex() == public
        assert key.sign(bytes.fromhex(message)).hex() == signature
        cases.append((bytes.fromhex(public), bytes.fromhex(signature), bytes.fromhex(message)))
    assert run_cases(cases) == [OK] * len(cases)


def test_sha512_matches_hashlib():
    rng = np.random.default_rng(1)
    # lengths around the 112/128-byte padding boundaries and a multi-block message
    messages = [b"", b"abc"] + [rng.bytes(n) for n in (111, 112, 113, 127, 128, 129, 239, 240, 1000)]
    text = "".join(f"sha512 {m.hex() or '-'}\n" for m in messages)
    proc = subprocess.run([str(_verifier())], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [hashlib.sha512(m).hexdigest() for m in messages]


def test_200_random_signatures_from_cryptography_verify():
    cases = [(_raw_public(k), k.sign(m), m) for k, m in _keys_and_messages(200, seed=7)]
    assert run_cases(cases) == [OK] * 200


def test_every_single_bit_flip_is_rejected():
    cases = []
    for key, message in _keys_and_messages(3, seed=11):
        message = message[:16] or b"x"
        public, signature = _raw_public(key), key.sign(message)
        for bit in range(64 * 8):
            sig = bytearray(signature)
            sig[bit // 8] ^= 1 << (bit % 8)
            cases.append((public, bytes(sig), message))
        for bit in range(len(message) * 8):
            msg = bytearray(message)
            msg[bit // 8] ^= 1 << (bit % 8)
            cases.append((public, signature, bytes(msg)))
        for bit in range(32 * 8):
            pk = bytearray(public)
            pk[bit // 8] ^= 1 << (bit % 8)
            cases.append((bytes(pk), signature, message))
    results = run_cases(cases)
    assert len(results) == len(cases)
    assert OK not in results, f"{results.count(OK)} flipped cases verified"
    # each reason shows up: flips of R/A mostly land off the curve, flips of S's top bits make S >= L
    assert {BAD_S, BAD_R, BAD_KEY, MISMATCH} <= set(results)


def test_non_canonical_s_is_rejected():
    key, message = next(_keys_and_messages(1, seed=3))
    public, signature = _raw_public(key), key.sign(message)
    s = int.from_bytes(signature[32:], "little")
    r = signature[:32]
    # S + L is the same scalar mod L (the equation would hold): only the S < L check refuses it
    cases = [(public, r + (s + L).to_bytes(32, "little"), message),
             (public, r + L.to_bytes(32, "little"), message),
             (public, r + (2**256 - 1).to_bytes(32, "little"), message),
             (public, r + (L - 1).to_bytes(32, "little"), message)]
    assert run_cases(cases) == [BAD_S, BAD_S, BAD_S, MISMATCH]


def test_bad_point_encodings_are_rejected():
    key, message = next(_keys_and_messages(1, seed=4))
    public, signature = _raw_public(key), key.sign(message)
    y_not_canonical = (P + 1).to_bytes(32, "little")  # y = p + 1 >= p (same value as y = 1)
    x_zero_negative = (1 | (1 << 255)).to_bytes(32, "little")  # y = 1 means x = 0: sign 1 is invalid
    not_on_curve = (2).to_bytes(32, "little")  # (y^2 - 1)/(d y^2 + 1) is not a square for y = 2
    assert _is_square((4 - 1) * pow(_D * 4 + 1, P - 2, P) % P) is False
    cases = [(y_not_canonical, signature, message), (x_zero_negative, signature, message),
             (not_on_curve, signature, message), (public, y_not_canonical + signature[32:], message),
             (public, not_on_curve + signature[32:], message)]
    assert run_cases(cases) == [BAD_KEY, BAD_KEY, BAD_KEY, BAD_R, BAD_R]


_D = -121665 * pow(121666, P - 2, P) % P


def _is_square(v: int) -> bool:
    return v == 0 or pow(v, (P - 1) // 2, P) == 1


def _c_array(name: str) -> int:
    """A 32-byte little-endian constant of es_ed25519.c as an integer."""
    source = (FIRMWARE / "es_ed25519.c").read_text()
    body = re.search(rf"{name}\[32\] = \{{(.*?)\}};", source, re.S)
    assert body, f"{name} not found in es_ed25519.c"
    values = [int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", body.group(1))]
    assert len(values) == 32
    return int.from_bytes(bytes(values), "little")


def test_c_constants_match_their_definitions():
    sqrt_m1 = pow(2, (P - 1) // 4, P)
    y = 4 * pow(5, P - 2, P) % P
    x2 = (y * y - 1) * pow(_D * y * y + 1, P - 2, P) % P
    x = _c_array("BASE_X_BYTES")
    assert _c_array("D_BYTES") == _D and _c_array("D2_BYTES") == 2 * _D % P
    assert sqrt_m1 * sqrt_m1 % P == P - 1 and _c_array("SQRTM1_BYTES") == sqrt_m1
    assert _c_array("BASE_Y_BYTES") == y and x * x % P == x2 and x % 2 == 0
    assert _c_array("L_BYTES") == L and _c_array("P58_BYTES") == (P - 5) // 8
