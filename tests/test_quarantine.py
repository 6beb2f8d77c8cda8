"""Quarantine: flagged images are never returned, are kept with scores and reasons, are visible
only to compliance officers, and are released or rejected with a recorded reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from test_screening import picture

from latentops.core.errors import Conflict, PolicyDenied
from latentops.governance import identities, policy, quarantine
from latentops.platform.database import session_scope
from latentops.platform.services import users
from latentops.platform.tables import Asset, AuditEntry

OFFICER = "olga@example.com"
SUBMITTER = "sam@example.com"


@pytest.fixture
def people(settings_env, database_url: str):  # type: ignore[no-untyped-def]
    policy.use_service(None)
    with session_scope(database_url) as db:
        users.create_user(db, email=OFFICER, role="compliance_officer", team="compliance", password=None, actor="cli:test")
        users.create_user(db, email=SUBMITTER, role="submitter", team="design", password=None, actor="cli:test")
    yield settings_env
    policy.use_service(None)


def _admit(settings, database_url: str, seed: int):  # type: ignore[no-untyped-def]
    with session_scope(database_url) as db:
        admission = quarantine.admit(db, settings=settings, image=picture(seed, 288), actor=SUBMITTER, seed=seed,
                                     prompt_ref="0" * 64, team="design")
        return admission.asset.id, admission.image, admission.outcome


def test_flagged_image_is_kept_not_returned_and_only_officers_see_it(people, database_url: str) -> None:
    # No detector covers most categories and policy holds unscreened images: it is flagged.
    asset_id, pixels, outcome = _admit(people, database_url, 1)
    assert pixels is None and outcome.verdict == "quarantine"
    with session_scope(database_url) as db:
        asset = db.get(Asset, asset_id)
        assert asset is not None and asset.status == "quarantined" and Path(asset.path).is_file()
        assert Path(asset.path).parent == quarantine.quarantine_dir(people)
    with pytest.raises(PolicyDenied, match="compliance_officer"), session_scope(database_url) as db:
        quarantine.list_quarantined(db, actor=SUBMITTER)
    with pytest.raises(PolicyDenied), session_scope(database_url) as db:
        quarantine.quarantined_image(db, asset_id=asset_id, actor=SUBMITTER)
    with session_scope(database_url) as db:
        rows = quarantine.list_quarantined(db, actor=OFFICER)
        image = quarantine.quarantined_image(db, asset_id=asset_id, actor=OFFICER)
    assert [r["asset_id"] for r in rows] == [asset_id]
    assert rows[0]["reasons"] == outcome.reasons and rows[0]["detectors"] == [outcome.detector]
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    with session_scope(database_url) as db:
        denied = db.scalars(sa.select(AuditEntry).where(AuditEntry.action == "policy.decision", AuditEntry.outcome == "deny",
                                                        AuditEntry.actor == identities.stored_actor(db, SUBMITTER))).all()
    assert len(denied) >= 2  # the refused looks are evidence too


def test_release_needs_an_officer_and_a_reason_and_applies_provenance(people, database_url: str) -> None:
    asset_id, _, _ = _admit(people, database_url, 2)
    with pytest.raises(PolicyDenied, match="reason is required"), session_scope(database_url) as db:
        quarantine.release(db, settings=people, asset_id=asset_id, reason=" ", actor=OFFICER)
    with pytest.raises(PolicyDenied), session_scope(database_url) as db:
        quarantine.release(db, settings=people, asset_id=asset_id, reason="looks fine to me", actor=SUBMITTER)
    with session_scope(database_url) as db:
        quarantined_path = Path(db.get(Asset, asset_id).path)  # type: ignore[union-attr]
        asset = quarantine.release(db, settings=people, asset_id=asset_id, reason="false positive: abstract pattern", actor=OFFICER)
        assert asset.status == "released" and asset.review_reason == "false positive: abstract pattern"
        assert asset.reviewed_by is not None and asset.provenance["c2pa"]["signed"] is True
        released_path = Path(asset.path)
    assert released_path.is_file() and released_path.parent == quarantine.released_dir(people)
    assert quarantined_path.is_file()  # nothing deleted
    with pytest.raises(Conflict), session_scope(database_url) as db:
        quarantine.reject(db, asset_id=asset_id, reason="changed my mind", actor=OFFICER)


def test_reject_keeps_the_image_and_records_who_and_why(people, database_url: str) -> None:
    asset_id, _, _ = _admit(people, database_url, 3)
    with session_scope(database_url) as db:
        quarantine.reject(db, asset_id=asset_id, reason="resembles a protected character", actor=OFFICER)
    with session_scope(database_url) as db:
        asset = db.get(Asset, asset_id)
        assert asset is not None and asset.status == "rejected" and Path(asset.path).is_file()
        entry = db.scalars(sa.select(AuditEntry).where(AuditEntry.action == "asset.reject")).one()
        assert entry.actor == identities.stored_actor(db, OFFICER) and "protected character" in entry.details
        assert [r["asset_id"] for r in quarantine.list_quarantined(db, actor=OFFICER, status="rejected")] == [asset_id]
        assert quarantine.list_quarantined(db, actor=OFFICER) == []
    with pytest.raises(Conflict), session_scope(database_url) as db:
        quarantine.release(db, settings=people, asset_id=asset_id, reason="appeal", actor=OFFICER)


def test_released_image_is_returned_signed_when_policy_allows(people, database_url: str) -> None:
    with session_scope(database_url) as db:
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)
    asset_id, pixels, outcome = _admit(people, database_url, 4)
    assert outcome.verdict == "release" and pixels is not None
    with session_scope(database_url) as db:
        asset = db.get(Asset, asset_id)
        assert asset is not None and asset.status == "released" and Path(asset.path).read_bytes() == pixels
