"""Provenance on every released image: a signed C2PA manifest and an invisible watermark.

``apply`` is called once an image is released (``quarantine.admit`` or a compliance release):

1. **Watermark** (invisible-watermark, ``dwtDct``) on images whose shorter side is at least
   ``WATERMARK_MIN_SIDE`` pixels: 64 bits = a 16-bit marker, the 32-bit asset id and a 16-bit
   check, so a damaged mark reads as "none", never as another asset. ``dwtDct`` modulates the
   largest low-band value of each block and misreads flat regions (a lowered maximum stops being
   the maximum), so the mark is read back right after embedding; when it does not read back, the
   same package's ``dwtDctSvd`` (which modulates the block's largest singular value, robust on
   flat areas) is used instead, and failing that the image is released without a mark and its
   provenance says ``"embedded": false`` with the reason (the signed manifest still identifies it).
2. **C2PA manifest** (c2pa-python): a ``c2pa.created`` action with ``digitalSourceType``
   ``trainedAlgorithmicMedia`` and a ``com.latentops.provenance`` assertion with the asset id, the
   model version, the LoRA version, the policy revision and the audit entry (``seq``) of the release,
   signed with the organisation's certificate chain.

**Signing chain.** ``latentops provenance use-chain --chain CHAIN.pem --key KEY.pem`` configures the
organisation's chain (leaf first) and key. Without one, the first signature creates a local CA and
a signing certificate in ``LATENTOPS_HOME/provenance/local-ca``. That CA is **not publicly
trusted**: C2PA validators elsewhere report the signature as valid but untrusted; ``verify`` trusts
it because it is this installation's own anchor.

``verify`` reads both marks back and resolves the asset to its database row and audit entry.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import logging
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session

from latentops.core.errors import ConfigurationError, IntegrityViolation, InvalidInput
from latentops.core.settings import Settings
from latentops.core.tables import Asset
from latentops.governance import audit
from latentops.governance.imagefile import load_image, png_bytes, read_bytes
from latentops.governance.tables import AuditEntry

log = logging.getLogger(__name__)

WATERMARK_MIN_SIDE = 256
WATERMARK_MARKER = 0x4C54  # "LT"
WATERMARK_BITS = 64
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ASSERTION = "com.latentops.provenance"
CLAIM_GENERATOR = "latentops"


# --- watermark ------------------------------------------------------------------------------------


def _payload(asset_id: int) -> list[int]:
    if not 0 <= asset_id < 2**32:
        raise InvalidInput(f"asset_id: {asset_id} does not fit the 32-bit watermark payload")
    head = (WATERMARK_MARKER << 32) | asset_id
    check = zlib.crc32(head.to_bytes(6, "big")) & 0xFFFF
    value = (head << 16) | check
    return [int(bit) for bit in format(value, f"0{WATERMARK_BITS}b")]


def _parse(bits: Any) -> int | None:
    value = int("".join("1" if b else "0" for b in bits), 2)
    head, check = value >> 16, value & 0xFFFF
    if head >> 32 != WATERMARK_MARKER or zlib.crc32(head.to_bytes(6, "big")) & 0xFFFF != check:
        return None
    return head & 0xFFFFFFFF


WATERMARK_METHODS = ("dwtDct", "dwtDctSvd")


def embed_watermark(image: Image.Image, asset_id: int) -> tuple[Image.Image, dict[str, Any]]:
    """``(image, info)``: the marked image when the mark reads back, else the image unchanged."""
    if min(image.size) < WATERMARK_MIN_SIDE:
        return image, {"embedded": False, "reason": f"shorter side below {WATERMARK_MIN_SIDE} px"}
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", _payload(asset_id))
    bgr = np.asarray(image.convert("RGB"))[:, :, ::-1].copy()
    for method in WATERMARK_METHODS:
        marked = Image.fromarray(encoder.encode(bgr, method)[:, :, ::-1].copy())
        if _read_with(marked, method) == asset_id:
            return marked, {"embedded": True, "method": method, "bits": WATERMARK_BITS}
        log.info("%s mark did not read back on asset %s", method, asset_id)
    log.warning("watermark did not survive on asset %s; released with the C2PA manifest only", asset_id)
    return image, {"embedded": False, "reason": "no watermark method read back on this image"}


def _read_with(image: Image.Image, method: str) -> int | None:
    from imwatermark import WatermarkDecoder

    bgr = np.asarray(image.convert("RGB"))[:, :, ::-1].copy()
    return _parse(WatermarkDecoder("bits", WATERMARK_BITS).decode(bgr, method))


def read_watermark(image: Image.Image) -> int | None:
    """The asset id carried by the watermark, or ``None`` (no mark, or it does not check)."""
    if min(image.size) < WATERMARK_MIN_SIDE:
        return None
    for method in WATERMARK_METHODS:
        found = _read_with(image, method)
        if found is not None:
            return found
    return None


# --- signing material -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningMaterial:
    chain_pem: bytes
    key_pem: bytes
    alg: str
    anchors_pem: bytes
    source: str  # "local-ca" | "configured"


def provenance_dir(settings: Settings) -> Path:
    return settings.home / "provenance"


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _alg_for(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(key.curve.name, "")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    return ""


def _create_local_ca(folder: Path) -> None:
    """A local CA and a C2PA signing certificate under it (not publicly trusted)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    usage = {"content_commitment": False, "key_encipherment": False, "data_encipherment": False, "key_agreement": False,
             "encipher_only": False, "decipher_only": False}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "latentops local CA (not publicly trusted)"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "latentops installation")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "latentops content signing"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "latentops installation")])
    leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    pkcs8: dict[str, Any] = {"encoding": pem, "format": serialization.PrivateFormat.PKCS8,
                             "encryption_algorithm": serialization.NoEncryption()}
    folder.mkdir(parents=True, exist_ok=True)
    _write_private(folder / "ca-key.pem", ca_key.private_bytes(**pkcs8))
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    _write_private(folder / "key.pem", key.private_bytes(**pkcs8))
    (folder / "chain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (folder / "README.txt").write_text(
        "Local content-signing CA created by latentops on first use. It is NOT publicly trusted: C2PA\n"
        "validators outside this installation report manifests signed with it as untrusted. Configure the\n"
        "organisation's chain with `latentops provenance use-chain --chain CHAIN.pem --key KEY.pem`.\n",
        encoding="utf-8")
    log.warning("created a local, not publicly trusted, content-signing CA in %s", folder)


def signing_material(settings: Settings) -> SigningMaterial:
    """The configured chain, else the local CA (created on first use)."""
    configured = provenance_dir(settings) / "configured"
    if (configured / "chain.pem").exists():
        folder, source = configured, "configured"
    else:
        folder, source = provenance_dir(settings) / "local-ca", "local-ca"
        if not (folder / "chain.pem").exists():
            _create_local_ca(folder)
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
    anchors = folder / "anchors.pem" if (folder / "anchors.pem").exists() else folder / "ca.pem"
    return SigningMaterial((folder / "chain.pem").read_bytes(), (folder / "key.pem").read_bytes(), meta.get("alg", "es256"),
                           anchors.read_bytes() if anchors.exists() else b"", source)


def use_chain(session: Session, *, settings: Settings, chain: Path, key: Path, actor: audit.Actor | str,
              anchors: Path | None = None) -> dict[str, Any]:
    """Configure the organisation's signing chain (leaf first) and private key; audited."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificates = x509.load_pem_x509_certificates(read_bytes(chain))
    except ValueError as error:
        raise InvalidInput(f"chain: {chain} holds no PEM certificates ({error})") from None
    try:
        private = serialization.load_pem_private_key(read_bytes(key), password=None)
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"key: {key} is not an unencrypted PEM private key ({error})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.PEM
    if certificates[0].public_key().public_bytes(encoding, public) != private.public_key().public_bytes(encoding, public):
        raise InvalidInput(f"key: {key} does not belong to the first certificate of {chain}")
    alg = _alg_for(private)
    if not alg:
        raise InvalidInput(f"key: {key} has a key type C2PA cannot sign with (use EC P-256/384/521, Ed25519 or RSA)")
    folder = provenance_dir(settings) / "configured"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(chain, folder / "chain.pem")
    _write_private(folder / "key.pem", read_bytes(key))
    if anchors is not None:
        shutil.copyfile(anchors, folder / "anchors.pem")
    (folder / "meta.json").write_text(json.dumps({"alg": alg}), encoding="utf-8")
    subject = certificates[0].subject.rfc4514_string()
    audit.record(session, actor=actor, action="provenance.chain.configure", resource="provenance:signing",
                 details={"subject": subject, "alg": alg, "certificates": len(certificates)})
    return {"subject": subject, "alg": alg, "certificates": len(certificates)}


# --- signing and verifying ------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _signing_context() -> Any:
    """c2pa settings for signing: no embedded thumbnail. By default c2pa renders a JPEG preview of
    the image into the manifest: a second copy of the pixels (a 32 px PNG grows from 3 KB to 33 KB)
    and about 50 ms per image, most of the governed path's cost on small images."""
    import c2pa

    return c2pa.Context(c2pa.Settings.from_json(json.dumps({"builder": {"thumbnail": {"enabled": False}}})))


def apply(*, settings: Settings, image: Image.Image, asset_id: int, model_version: str, lora_version: str | None,
          policy_revision: str, audit_seq: int | None) -> tuple[bytes, dict[str, Any]]:
    """``(signed PNG bytes, provenance record)`` for a released image."""
    import c2pa

    marked, watermark = embed_watermark(image.convert("RGB"), asset_id)
    material = signing_material(settings)
    facts = {"asset_id": asset_id, "model_version": model_version, "lora_version": lora_version,
             "policy_revision": policy_revision, "audit_seq": audit_seq}
    manifest = {
        "claim_generator_info": [{"name": CLAIM_GENERATOR, "version": "0.1.0"}],
        "title": f"asset-{asset_id}.png",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": DIGITAL_SOURCE_TYPE}]}},
            {"label": ASSERTION, "data": facts},
        ],
    }
    try:
        info = c2pa.C2paSignerInfo(alg=material.alg.encode(), sign_cert=material.chain_pem, private_key=material.key_pem, ta_url=None)
        signer = c2pa.Signer.from_info(info)
        output = io.BytesIO()
        with c2pa.Builder(manifest, context=_signing_context()) as builder:
            builder.sign(signer, "image/png", io.BytesIO(png_bytes(marked)), output)
    except c2pa.C2paError as error:
        raise ConfigurationError(f"provenance: the signing chain ({material.source}) could not sign ({error})") from None
    return output.getvalue(), {"c2pa": {"signed": True, "chain": material.source, **facts}, "watermark": watermark}


def read_manifest(data: bytes, anchors_pem: bytes) -> dict[str, Any] | None:
    """The active manifest, our assertion and the validation state, or ``None`` when there is none."""
    import c2pa

    settings: dict[str, Any] = {"verify": {"verify_trust": True}}
    if anchors_pem:
        settings["trust"] = {"trust_anchors": anchors_pem.decode()}
    try:
        context = c2pa.Context(c2pa.Settings.from_json(json.dumps(settings)))
        with c2pa.Reader("image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else None, io.BytesIO(data), context=context) as reader:
            store = json.loads(reader.json())
            active = reader.get_active_manifest() or {}
    except c2pa.C2paError as error:
        if "ManifestNotFound" in type(error).__name__ or "no JUMBF" in str(error) or "not found" in str(error).lower():
            return None
        raise InvalidInput(f"image: its C2PA data could not be read ({error})") from None
    assertions = {a.get("label"): a.get("data") for a in active.get("assertions", [])}
    actions = (assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions") or {}).get("actions", [])
    return {
        "validation_state": store.get("validation_state"),
        "validation_status": [s.get("code") for s in store.get("validation_status", []) or []],
        "signer": active.get("signature_info", {}),
        "actions": actions,
        "latentops": assertions.get(ASSERTION),
    }


def verify(session: Session, *, settings: Settings, path: Path) -> dict[str, Any]:
    """Read the manifest and the watermark of ``path`` and resolve the asset and its audit entry."""
    data = read_bytes(path)
    image = load_image(data, name=str(path))
    manifest = read_manifest(data, signing_material(settings).anchors_pem)
    watermark_id = read_watermark(image)
    claimed = (manifest or {}).get("latentops") or {}
    asset_id = claimed.get("asset_id", watermark_id)
    if manifest and watermark_id is not None and claimed.get("asset_id") not in (None, watermark_id):
        raise IntegrityViolation(f"{path}: the manifest names asset {claimed.get('asset_id')} but the watermark names {watermark_id}")
    result: dict[str, Any] = {"file": str(path), "manifest": manifest, "watermark": {"asset_id": watermark_id},
                              "asset": None, "audit_entry": None}
    if asset_id is not None:
        asset = session.get(Asset, int(asset_id))
        if asset is not None:
            result["asset"] = {"id": asset.id, "status": asset.status, "content_hash": asset.content_hash,
                               "model_version_id": asset.model_version_id, "lora_adapter_id": asset.lora_adapter_id,
                               "created_at": asset.created_at.isoformat() if asset.created_at else None}
            seq = claimed.get("audit_seq", asset.audit_seq)
            if seq is not None:
                entry = session.scalar(sa.select(AuditEntry).where(AuditEntry.seq == int(seq)))
                if entry is not None:
                    result["audit_entry"] = {"seq": entry.seq, "action": entry.action, "resource": entry.resource,
                                             "actor": entry.actor, "hash": entry.hash}
    trusted = manifest is not None and manifest["validation_state"] in {"Valid", "Trusted"}
    result["verdict"] = ("verified" if trusted and result["asset"] else
                         "unknown_asset" if (manifest or watermark_id is not None) else "no_provenance")
    return result
