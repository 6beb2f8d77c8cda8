"""Provenance: released images carry a signed C2PA manifest and, from 256 px, a dwtDct watermark
with the asset id; ``latentops provenance verify`` reads both back to the asset's audit entry."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from test_screening import picture

from latentops.core.errors import InvalidInput
from latentops.governance import policy, provenance, quarantine
from latentops.platform.database import session_scope


@pytest.fixture
def releasing(settings_env, database_url: str):  # type: ignore[no-untyped-def]
    """Unscreened images may be released, so these tests see the release path."""
    policy.use_service(None)
    with session_scope(database_url) as db:
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)
    yield settings_env
    policy.use_service(None)


def _release(settings, database_url: str, image: Image.Image, tmp_path: Path) -> tuple[int, Path]:  # type: ignore[no-untyped-def]
    with session_scope(database_url) as db:
        admission = quarantine.admit(db, settings=settings, image=image, actor="cli:test", seed=1, prompt_ref="a" * 64)
        assert admission.image is not None
        path = tmp_path / f"released-{admission.asset.id}.png"
        path.write_bytes(admission.image)
        return admission.asset.id, path


def test_released_image_verifies_to_its_asset_and_audit_entry(releasing, database_url: str, tmp_path: Path) -> None:
    asset_id, path = _release(releasing, database_url, picture(11, 320), tmp_path)
    with session_scope(database_url) as db:
        result = provenance.verify(db, settings=releasing, path=path)
    manifest = result["manifest"]
    assert result["verdict"] == "verified"
    assert manifest["validation_state"] == "Trusted"  # the local CA is this installation's own anchor
    assert {"action": "c2pa.created", "digitalSourceType": provenance.DIGITAL_SOURCE_TYPE}.items() <= manifest["actions"][0].items()
    facts = manifest["latentops"]
    assert facts["asset_id"] == asset_id and facts["policy_revision"] == policy.revision()
    assert set(facts) >= {"model_version", "lora_version", "audit_seq"}
    assert result["watermark"]["asset_id"] == asset_id
    assert result["audit_entry"]["seq"] == facts["audit_seq"] and result["audit_entry"]["action"] == "asset.release"
    assert result["audit_entry"]["resource"] == f"asset:{asset_id}"
    assert (releasing.home / "provenance" / "local-ca" / "README.txt").read_text().count("NOT publicly trusted") == 1


def test_cli_verify_prints_json_and_fails_for_an_image_without_provenance(releasing, database_url: str, cli,  # type: ignore[no-untyped-def]
                                                                         tmp_path: Path) -> None:
    asset_id, path = _release(releasing, database_url, picture(12, 300), tmp_path)
    done = cli("provenance", "verify", str(path), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["asset"]["id"] == asset_id and result["watermark"]["asset_id"] == asset_id
    plain = tmp_path / "plain.png"
    picture(13, 300).save(plain)
    done = cli("provenance", "verify", str(plain), "--json")
    assert done.returncode == 1 and json.loads(done.stdout)["verdict"] == "no_provenance"


def test_small_images_are_signed_without_a_watermark(releasing, database_url: str, tmp_path: Path) -> None:
    asset_id, path = _release(releasing, database_url, picture(14, 128), tmp_path)
    with session_scope(database_url) as db:
        result = provenance.verify(db, settings=releasing, path=path)
    assert result["verdict"] == "verified" and result["watermark"]["asset_id"] is None
    assert result["manifest"]["latentops"]["asset_id"] == asset_id


def test_watermark_survives_a_png_round_trip_and_never_reads_as_another_asset(tmp_path: Path) -> None:
    for seed in range(15, 19):
        marked, info = provenance.embed_watermark(picture(seed, 320), 123456 + seed)
        assert info["embedded"] is True and info["method"] in provenance.WATERMARK_METHODS
        marked.save(tmp_path / "marked.png")
        assert provenance.read_watermark(Image.open(tmp_path / "marked.png").convert("RGB")) == 123456 + seed
        buffer = io.BytesIO()
        marked.save(buffer, "JPEG", quality=60)
        buffer.seek(0)
        assert provenance.read_watermark(Image.open(buffer).convert("RGB")) in {None, 123456 + seed}
        assert provenance.read_watermark(picture(seed, 320)) is None


def test_flat_images_get_the_robust_method() -> None:
    flat = Image.new("RGB", (300, 300), (250, 250, 250))
    marked, info = provenance.embed_watermark(flat, 77)
    assert info == {"embedded": True, "method": "dwtDctSvd", "bits": 64}
    assert provenance.read_watermark(marked) == 77


def test_edited_pixels_break_the_manifest(releasing, database_url: str, tmp_path: Path) -> None:
    _, path = _release(releasing, database_url, picture(16, 288), tmp_path)
    image = Image.open(path)
    image.load()
    info = image.info
    edited = image.convert("RGB")
    edited.putpixel((5, 5), (0, 0, 0))
    data = bytearray(path.read_bytes())
    # Re-encode the pixels but keep the C2PA chunk: copy it from the original file.
    start = data.find(b"caBX") - 4
    length = int.from_bytes(data[start:start + 4], "big")
    chunk = bytes(data[start:start + length + 12])
    buffer = io.BytesIO()
    edited.save(buffer, "PNG")
    plain = buffer.getvalue()
    tampered = tmp_path / "tampered.png"
    tampered.write_bytes(plain[:33] + chunk + plain[33:])
    assert info is not None
    with session_scope(database_url) as db:
        result = provenance.verify(db, settings=releasing, path=tampered)
    assert result["manifest"] is not None and result["manifest"]["validation_state"] not in {"Valid", "Trusted"}
    assert result["verdict"] != "verified"


def test_configured_chain_signs_instead_of_the_local_ca(releasing, database_url: str, tmp_path: Path) -> None:
    organisation = tmp_path / "org-ca"
    provenance._create_local_ca(organisation)
    with session_scope(database_url) as db:
        configured = provenance.use_chain(db, settings=releasing, chain=organisation / "chain.pem", key=organisation / "key.pem",
                                          anchors=organisation / "ca.pem", actor="cli:test")
        with pytest.raises(InvalidInput, match="does not belong"):
            provenance.use_chain(db, settings=releasing, chain=organisation / "chain.pem",
                                 key=_other_key(tmp_path),
                                 actor="cli:test")
    assert configured["alg"] == "es256"
    _, path = _release(releasing, database_url, picture(17, 300), tmp_path)
    with session_scope(database_url) as db:
        result = provenance.verify(db, settings=releasing, path=path)
    assert result["verdict"] == "verified" and provenance.signing_material(releasing).source == "configured"


def _other_key(tmp_path: Path) -> Path:
    other = tmp_path / "other-ca"
    provenance._create_local_ca(other)
    return other / "key.pem"
