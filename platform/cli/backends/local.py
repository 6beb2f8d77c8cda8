"""``LocalBackend``: the CLI's ``Backend`` over the services on this machine's database.

It acts as the console user (``cli:<login>``) and opens one session per unit of work through
``context.session()``, so ``--server`` can never reach the local database through it. The audit
helpers at the end (signing key, checkpoint sink, keyring) are this machine's, for the commands
that run locally only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from latentops.platform.cli import context
from latentops.platform.cli.backends.audit_files import (
    audit_key_path,
    audit_keyring,
    audit_sink,
    compliance_filters,
)
from latentops.platform.cli.backends.base import AuditFilters, GenerateOptions
from latentops.platform.cli.backends.local_cpu import LocalCpuJobs
from latentops.platform.services.finetune_request import Request as FinetuneRequest

T = TypeVar("T")


def run_recorded(work: Callable[[Session], T]) -> T:
    """Run ``work(db)`` in one session; a denial's decision record and audit entry still commit
    (``session_scope`` commits before a ``PolicyDenied`` propagates)."""
    with context.session() as db:
        return work(db)


class LocalBackend(LocalCpuJobs):
    """The services on this machine's database, acting as the console user (``cli:<login>``)."""

    # --- users and tokens ---------------------------------------------------------------------

    def create_user(self, *, email: str, role: str, team: str, password: str | None, new_team: bool) -> dict[str, Any]:
        from latentops.platform.services import users

        with context.session() as db:
            # A new team only when asked for, or as the installation's first (the first admin founds it).
            create = new_team or not users.team_names(db)
            user = users.create_user(db, email=email, role=role, team=team, password=password, actor=context.actor(),
                                     create_team=create)
            return {"id": user.id, "email": user.email, "team": team.strip().lower(), "role": role}

    def list_users(self, *, offset: int, limit: int) -> list[dict[str, Any]]:
        from latentops.platform.services import users

        with context.session() as db:
            rows = []
            for user in users.list_users(db, offset=offset, limit=limit):
                teams = ", ".join(f"{name}:{role.value}" for name, role in users.memberships_of(db, user))
                rows.append({"id": user.id, "email": user.email, "teams": teams,
                             "active": "yes" if user.is_active else "no"})
            return rows

    def create_token(self, *, email: str | None, name: str, scopes: list[str], expires_days: int) -> dict[str, Any]:
        from latentops.core.errors import InvalidInput
        from latentops.platform.services import tokens

        if not email:
            raise InvalidInput("email: required (--email): the user the token acts as")
        with context.session() as db:
            token, secret = tokens.create_token(db, email=email, name=name, scopes=scopes, expires_in_days=expires_days,
                                                actor=context.actor())
            return {"id": token.id, "token": secret, "expires_at": str(token.expires_at), "scopes": token.scopes}

    def revoke_token(self, token_id: int) -> None:
        from latentops.platform.services import tokens

        with context.session() as db:
            tokens.revoke_token(db, token_id=token_id, actor=context.actor())

    # --- jobs ---------------------------------------------------------------------------------

    def list_jobs(self, *, state: str | None, offset: int, limit: int) -> list[dict[str, Any]]:
        from latentops.platform.services import jobs

        with context.session() as db:
            return [jobs.as_dict(job) for job in jobs.list_jobs(db, state=state, offset=offset, limit=limit)]

    def show_job(self, job_id: int) -> dict[str, Any]:
        from latentops.platform.services import jobs

        with context.session() as db:
            job = jobs.get(db, job_id)
            return jobs.as_dict(job) | {"queue_position": jobs.queue_position(db, job)}

    def cancel_job(self, job_id: int) -> str:
        from latentops.platform.services import jobs

        with context.session() as db:
            return jobs.cancel(db, job_id=job_id, actor=context.actor()).state.value

    def retry_job(self, job_id: int) -> None:
        from latentops.platform.services import jobs

        with context.session() as db:  # the job goes to the broker once this commits
            jobs.retry(db, context.settings(), job_id=job_id, actor=context.actor())

    def job_logs(self, job_id: int) -> list[dict[str, Any]]:
        from latentops.platform.services import jobs

        with context.session() as db:
            jobs.get(db, job_id)
            return [{"at": e.at, "kind": e.kind, "message": e.message, "data": e.data} for e in jobs.events(db, job_id)]

    def follow_job(self, job_id: int) -> Iterator[dict[str, Any]]:
        from latentops.platform.services import jobs

        last: dict[str, Any] | None = None
        while True:
            with context.session() as db:
                job = jobs.get(db, job_id)
                snapshot = {"id": job.id, "state": job.state.value, "progress": job.progress, "error": job.error,
                            "hold_reason": job.hold_reason, "queue_position": jobs.queue_position(db, job),
                            "finished": job.state.finished}
            if snapshot != last:
                yield snapshot
                last = snapshot
            if snapshot["finished"]:
                return
            time.sleep(0.5)

    def submit_finetune(self, submission: FinetuneRequest) -> int:
        from latentops.platform.services import finetune

        with context.session() as db:  # a denial commits its decisions; the job goes to the broker once this commits
            job = finetune.submit(db, context.settings(), actor=context.actor(), request=submission)
        return job.id

    # --- models and grants --------------------------------------------------------------------

    def list_models(self, *, include_removed: bool) -> list[dict[str, Any]]:
        from latentops.platform.services import models

        with context.session() as db:
            return [dict(s.__dict__) for s in models.list_models(db, include_removed=include_removed)]

    def show_model(self, name: str) -> dict[str, Any]:
        from latentops.platform.services import models

        with context.session() as db:
            return models.describe(db, name=name)

    def grant(self, *, model: str, action: str, team: str | None, user: str | None) -> dict[str, Any]:
        from latentops.platform.services import grants

        def work(db: Session) -> dict[str, Any]:
            row = grants.grant(db, model=model, action=action, team=team, user=user, actor=context.actor())
            return {"grant_id": row.id, "model": model, "action": action, "team": team, "user": user}

        return run_recorded(work)

    def revoke(self, *, model: str, action: str, team: str | None, user: str | None) -> int:
        from latentops.platform.services import grants

        return run_recorded(lambda db: grants.revoke(db, model=model, action=action, team=team, user=user,
                                                     actor=context.actor()))

    def list_grants(self, model: str) -> list[dict[str, Any]]:
        from latentops.platform.services import grants

        with context.session() as db:
            return grants.list_grants(db, model=model)

    def import_model(self, *, source: str, name: str, allow_pickle: bool, description: str, sensitivity: str,
                     owner_team: str | None) -> dict[str, Any]:
        from latentops.platform.services import models

        store = context.settings().model_store
        assert store is not None  # Settings always fills it in
        with context.session() as db:
            version = models.import_model(db, source=source, name=name, actor=context.actor(), store_root=store,
                                          allow_pickle=allow_pickle, description=description, sensitivity=sensitivity,
                                          owner_team=owner_team)
            return {"name": name, "version": version.version, "family": version.config["family"],
                    "content_hash": version.content_hash, "path": version.path, "format": version.config["format"]}

    # --- generation and datasets --------------------------------------------------------------

    def generate(self, request: GenerateOptions) -> tuple[dict[str, Any], dict[int, bytes]]:
        """Generate in this process; a denial keeps its recorded decisions (they are evidence)."""
        from latentops.platform.services import generation

        actor = request.as_user or context.actor()
        settings = context.settings()
        spec = generation.GenerationSpec(prompts=[request.prompt], negative_prompt=request.negative_prompt,
                                         images_per_prompt=request.count, seed=request.seed, steps=request.steps,
                                         guidance_scale=request.guidance)

        def work(db: Session) -> Any:
            target = generation.resolve(db, model=request.model, lora=request.lora)
            team_name, team_id = generation.resolve_team(db, actor=actor, team=request.team)
            return generation.generate(db, settings=settings, actor=actor, target=target, spec=spec, team=team_name,
                                       team_id=team_id)

        result = run_recorded(work)
        return result.to_json(), {image.asset_id: image.png for image in result.images if image.png is not None}

    def submit_dataset(self, *, spec: Any, as_user: str | None) -> dict[str, Any]:
        from latentops.platform.services import datasets

        with context.session() as db:  # a denial commits its decisions; the job goes to the broker once this commits
            row, job = datasets.submit(db, context.settings(), actor=as_user or context.actor(), spec=spec,
                                       owner_email=as_user)
        return {"dataset_id": row.id, "job_id": job.id}

    def list_datasets(self) -> list[dict[str, Any]]:
        from latentops.platform.services import datasets

        with context.session() as db:
            return [datasets.as_dict(db, row) for row in datasets.list_datasets(db)]

    def show_dataset(self, dataset_id: int) -> dict[str, Any]:
        from latentops.platform.services import datasets

        with context.session() as db:
            return datasets.as_dict(db, datasets.get(db, dataset_id))

    # --- policies -----------------------------------------------------------------------------

    def decide(self, path: str, value: dict[str, Any]) -> dict[str, Any]:
        from latentops.governance import policy

        with context.session() as db:
            decision = policy.decide(path, value, session=db, actor=context.actor())
        return {**decision.to_json(), "decision_id": decision.decision_id}

    def check_prompt(self, text: str) -> dict[str, Any]:
        return self.decide("prompt", {"prompt": text})

    def policy_status(self) -> dict[str, Any]:
        from latentops.governance import policy

        with context.session() as db:
            policy.get_service().refresh(db)
        return policy.status()

    def policy_set_data(self, key: str, value: Any, *, note: str) -> dict[str, Any]:
        from latentops.governance import policy, policy_edits

        with context.session() as db:
            previous = policy_edits.data_in_force(db)["revision"]
            revision = policy.set_policy_data(db, key=key, value=value, actor=context.actor(), note=note)
            latest = policy_edits.history(db, limit=1)["items"][0]
        return {"key": key, "revision": revision, "previous_revision": previous, "edit": latest}

    def policy_history(self, *, key: str | None, offset: int, limit: int) -> dict[str, Any]:
        from latentops.governance import policy_edits

        with context.session() as db:
            return policy_edits.history(db, key=key, offset=offset, limit=limit)

    def policy_diff(self, to: int, *, since: int | None) -> dict[str, Any]:
        from latentops.governance import policy_edits

        with context.session() as db:
            return policy_edits.diff(db, to=to, since=since)

    def policy_rollback(self, to: int, *, note: str) -> dict[str, Any]:
        from latentops.governance import policy_edits

        with context.session() as db:
            previous = policy_edits.data_in_force(db)["revision"]
            return {**policy_edits.rollback(db, to=to, actor=context.actor(), note=note), "previous_revision": previous}

    # --- audit --------------------------------------------------------------------------------

    def audit_query(self, filters: AuditFilters, *, after: int | None, limit: int, reveal: bool) -> dict[str, Any]:
        from latentops.governance import compliance, erasure

        with context.session() as db:
            page = compliance.query(db, filters=compliance_filters(filters), after=after, limit=limit, reveal=reveal)
            if not reveal:
                return {"entries": page.entries, "next_after": page.next_after}
            # The console holds the console roles (admin); the reveal is recorded with who asked.
            identities = erasure.reveal_identities(db, page.entries, actor=context.actor(), personal=True)
        return {"entries": page.entries, "next_after": page.next_after, "identities": identities}

    def audit_verify(self, *, public_keys: list[Path], sink: str | None) -> dict[str, Any]:
        """Verify the trail and record the verification; a damaged chain refuses the record, not the report."""
        from latentops.core.errors import IntegrityViolation
        from latentops.governance import audit, verification

        keyring = audit_keyring(public_keys)
        with context.session() as db:
            report = verification.verify(db, keyring=keyring, sink=audit_sink(sink))
        try:
            with context.session() as db:
                audit.record(db, actor=context.actor(), action="audit.verify", resource="audit:log",
                             outcome="success" if report.ok else "failure", details=report.to_json())
        except IntegrityViolation:
            pass  # the writer refused a damaged chain and alarmed; the report says why
        return report.to_json()

    def audit_checkpoint(self, *, key: Path | None, sink: str | None, force: bool) -> dict[str, Any]:
        from latentops.governance import checkpoints

        key_path = audit_key_path(key)
        signing_key = checkpoints.load_or_create_signing_key(key_path)
        with context.session() as db:
            made = checkpoints.create(db, signing_key=signing_key, sink=audit_sink(sink), force=force,
                                      keyring=checkpoints.signing_keyring(key_path))
            return {"id": made.id, **checkpoints.statement(made)}

    def audit_prove(self, seq: int) -> dict[str, Any]:
        from latentops.governance import compliance

        with context.session() as db:
            return compliance.inclusion(db, seq=seq)

    def audit_consistency(self, old: int, new: int) -> dict[str, Any]:
        from latentops.governance import compliance

        with context.session() as db:
            return compliance.consistency(db, old=old, new=new)

    def audit_consistency_from(self, from_size: int) -> dict[str, Any]:
        from latentops.governance import compliance

        with context.session() as db:
            return compliance.consistency_bundle(db, from_size=from_size)

    def audit_export(self, out: Path, *, fmt: str, filters: AuditFilters, key: Path | None,
                     sink: str | None) -> dict[str, Any]:
        """Sign a fresh checkpoint, write the entries with proofs and ``OUT.proofs.json``, record the export."""
        from latentops.governance import audit, checkpoints, compliance

        chosen = compliance_filters(filters)
        key_path = audit_key_path(key)
        signing_key = checkpoints.load_or_create_signing_key(key_path)
        keyring = checkpoints.signing_keyring(key_path)
        with context.session() as db:
            checkpoints.create(db, signing_key=signing_key, sink=audit_sink(sink), keyring=keyring)
        with context.session() as db:
            summary = compliance.export(db, path=out, fmt="csv" if fmt == "csv" else "jsonl", filters=chosen,
                                        public_key_pem=checkpoints.public_key_pem(signing_key.public_key()),
                                        keyring_pem=checkpoints.keyring_pem(keyring))
            audit.record(db, actor=context.actor(), action="audit.export", resource="audit:log",
                         details=compliance.summary_details(summary, chosen, fmt))
        return {"path": summary.path, "proofs_path": summary.proofs_path, "entries": summary.entries,
                "tree_size": summary.tree_size, "root_hash": summary.root_hash}

    def audit_public_keys(self, *, key: Path | None, current: bool) -> str:
        from latentops.governance import checkpoints

        key_path = audit_key_path(key)
        signing_key = checkpoints.load_or_create_signing_key(key_path)
        if current:
            return checkpoints.public_key_pem(signing_key.public_key())
        return checkpoints.keyring_pem(checkpoints.signing_keyring(key_path))

    def audit_evidence(self, out: Path, *, window: Any, key: Path | None, sink: str | None) -> dict[str, Any]:
        """Sign a fresh checkpoint, build the evidence pack of ``window``, record it, write the zip to ``out``."""
        from latentops.governance import checkpoints, evidence

        with context.session() as db:
            pack = evidence.make(db, window=window, key_path=audit_key_path(key), sink=audit_sink(sink),
                                 actor=context.actor())
        out.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.write_atomically(out, pack.data, 0o644)
        return {"path": out, **pack.summary()}

    # --- quarantine ---------------------------------------------------------------------------

    def quarantine_list(self, status: str) -> list[dict[str, Any]]:
        from latentops.governance import quarantine

        with context.session() as db:
            return quarantine.list_quarantined(db, actor=context.actor(), status=status)

    def quarantine_release(self, asset_id: int, reason: str) -> dict[str, Any]:
        from latentops.governance import quarantine

        with context.session() as db:
            asset = quarantine.release(db, settings=context.settings(), asset_id=asset_id, reason=reason,
                                       actor=context.actor())
            return {"asset_id": asset.id, "status": asset.status, "path": asset.path}

    def quarantine_reject(self, asset_id: int, reason: str) -> dict[str, Any]:
        from latentops.governance import quarantine

        with context.session() as db:
            asset = quarantine.reject(db, asset_id=asset_id, reason=reason, actor=context.actor())
            return {"asset_id": asset.id, "status": asset.status, "path": asset.path}

    # --- copyright reference index and screening ----------------------------------------------

    def copyright_add(self, *, directory: Path, owner: str, licence: str) -> dict[str, Any]:
        from latentops.governance import copyright

        with context.session() as db:
            return copyright.add_references(db, settings=context.settings(), directory=directory, owner=owner,
                                            licence=licence, actor=context.actor()).to_json()

    def copyright_list(self, *, owner: str | None, offset: int, limit: int) -> list[dict[str, Any]]:
        from latentops.governance import copyright

        with context.session() as db:
            return copyright.list_references(db, owner=owner, offset=offset, limit=limit)

    def screening_status(self) -> dict[str, Any]:
        from latentops.governance import screening

        return screening.status(context.settings())

    def screening_calibrate(self, *, images: Path, labels: Path, target_fpr: float) -> dict[str, Any]:
        from latentops.governance import calibration

        with context.session() as db:
            report = calibration.calibrate(db, settings=context.settings(), images=images, labels=labels,
                                           target_fpr=target_fpr, actor=context.actor())
            return report.to_json()

    def screen(self, image: Path, *, team: str | None) -> dict[str, Any]:
        from latentops.governance import screening

        with context.session() as db:
            outcome = screening.screen(db, settings=context.settings(), image=image, name=str(image),
                                       actor=context.actor(), team=team)
            return outcome.to_json()
