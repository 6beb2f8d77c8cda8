"""``latentops audit``: verify, integrate, checkpoint, rotate the key, prove, export and query the trail.

With ``--server`` the commands that read or sign the server's trail (``verify``, ``checkpoint``,
``prove``, ``consistency``, ``export``, ``query``, ``public-key``) go through its REST API and print
what they print locally; the server signs with its own key and writes its own sink, so ``--key``,
``--sink`` and ``--public-key`` are refused there. ``integrate``, ``rotate-key`` and ``erase`` act
on this machine's database and key files only and refuse ``--server``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from latentops.core.errors import IntegrityViolation, InvalidInput
from latentops.governance import (
    compliance,
    erasure,
    integration,
    key_rotation,
    verification,
    witness_client,
    witness_policy,
)
from latentops.platform.cli import audit_evidence, backends, context, output
from latentops.platform.cli.backends import AuditFilters
from latentops.platform.cli.backends.audit_files import audit_key_path, audit_sink
from latentops.platform.cli.jobs import follow_to_success

audit_app = typer.Typer(help="The tamper-evident audit trail: verify it, sign checkpoints, prove and export.",
                        no_args_is_help=True)

KEY_HELP = "Ed25519 signing key (PEM; default LATENTOPS_AUDIT_SIGNING_KEY, created if missing). Local only."
SINK_HELP = "External checkpoint sink: a file path or scheme://... (default LATENTOPS_AUDIT_SINK). Local only."

SINCE = typer.Option(None, help="Entries at or after this ISO 8601 time (UTC if no zone).")
UNTIL = typer.Option(None, help="Entries before this ISO 8601 time.")
ACTOR = typer.Option(None, help="Actor, exact or a prefix ending in *.")
ACTION = typer.Option(None, help="Action (e.g. job.submit), exact or a prefix ending in * (job.*).")
RESOURCE = typer.Option(None, help="Resource (e.g. job:12), exact or a prefix ending in *.")
OUTCOME = typer.Option(None, help="Outcome: success, failure, denied, ...")


@audit_app.command("verify")
def verify(
    public_key: list[Path] | None = typer.Option(
        None, "--public-key", help="Public key or keyring file the checkpoints are signed with; repeat for old keys "
        "(default: the keyring beside the signing key). Local only."),
    sink: str | None = typer.Option(None, "--sink", help=SINK_HELP),
    witness_key: list[str] | None = typer.Option(
        None, "--witness-key", help="A witness's cosignature vkey (name+keyhash+base64key) or a file holding it; repeat "
        "(default: the witnesses of LATENTOPS_AUDIT_WITNESSES, reported but not required). Local only."),
    witnesses_required: int | None = typer.Option(
        None, "--witnesses-required", help="Fail unless this many of the witness keys cosigned the latest checkpoint "
        "(default: all keys given with --witness-key, none for configured ones)."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Integrate pending entries, recompute the chain and the Merkle tree and check every checkpoint
    with the key each names, and witness cosignatures; exit non-zero on damage (with --server: the
    server's trail)."""
    report = backends.backend().audit_verify(public_keys=list(public_key or []), sink=sink)
    witnesses = _witness_check(list(witness_key or []), witnesses_required)
    if witnesses is not None:
        report["witnesses"] = witnesses.to_json()
    if json_output:
        output.emit_json(report)
    for warning in report["warnings"]:
        output.error(f"warning: {warning}")
    if not report["ok"]:
        damage = [verification.Damage(kind=d["kind"], seq=d["seq"], detail=d["detail"]).line() for d in report["damage"]]
        raise IntegrityViolation(f"audit trail damaged: {damage[0]}", reasons=damage[1:])
    if witnesses is not None and not witnesses.ok:
        raise IntegrityViolation(f"audit witnesses: {witnesses.failure()}")
    if witnesses is not None and witnesses.missing:
        output.error(f"warning: {witnesses.failure()}")
    if not json_output:
        output.say(f"audit trail intact: {report['entries']} entries, {report['checkpoints']} checkpoints "
                   f"({report['sink_checkpoints']} in the sink) verified; tree size {report['tree_size']}, "
                   f"root {report['root_hash']}" + (f"; {report['pending']} entries pending" if report["pending"] else "")
                   + f"; {report.get('beyond_checkpoint', 0)} entries beyond the last checkpoint (a deletion of "
                   "these from the tail cannot be proven until the next one)")
        if witnesses is not None:
            output.say(f"witnesses: {len(witnesses.cosigned)} of {len(witnesses.keys)} cosigned the latest checkpoint "
                       f"(tree size {witnesses.tree_size}; {witnesses.required} required)"
                       + "".join(f"; {key}" for key in witnesses.cosigned))


def _witness_check(keys: list[str], required: int | None) -> witness_policy.WitnessReport | None:
    """The M-of-N witness check on this machine's database (None when no witness is given or configured)."""
    if context.remote():
        if keys or required is not None:
            raise InvalidInput("--witness-key: checked against the local database only; with --server, export and "
                               "run the standalone verifier with --witness-key")
        return None
    given = witness_policy.read_keys(keys) if keys else [witness.key for witness in witness_client.configured()]
    if not given:
        if required:
            raise InvalidInput("--witnesses-required: no witness keys given (--witness-key) or configured "
                               "(LATENTOPS_AUDIT_WITNESSES)")
        return None
    with context.session() as db:
        return witness_policy.check(db, given, required if required is not None else (len(given) if keys else 0))


@audit_app.command("integrate")
def integrate(
    watch: float | None = typer.Option(None, "--watch", help="Keep integrating every this many seconds (until stopped)."),
) -> None:
    """Give pending entries (committed, not yet in the chain) their seq and hashes (this machine's database)."""
    context.require_local()
    from latentops.platform.database import get_engine

    engine = get_engine(context.settings().database_url)
    moved = integration.run_once(engine)
    output.say(f"integrated {moved} pending entries")
    if watch is not None:
        import time

        while True:
            time.sleep(watch)
            moved = integration.run_once(engine)
            if moved:
                output.say(f"integrated {moved} pending entries")


@audit_app.command("checkpoint")
def checkpoint(
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
    sink: str | None = typer.Option(None, "--sink", help=SINK_HELP),
    force: bool = typer.Option(False, "--force", help="Sign even if no entry was added since the last checkpoint."),
    json_output: bool = typer.Option(False, "--json", help="Print the checkpoint as JSON."),
) -> None:
    """Sign the current Merkle tree; store it in the database and the external sink."""
    result = backends.backend().audit_checkpoint(key=key, sink=sink, force=force)
    if json_output:
        output.emit_json(result)
    else:
        output.say(f"checkpoint {result['id']}: tree size {result['tree_size']}, root {result['root_hash']}")


@audit_app.command("prove")
def prove(
    seq: int = typer.Argument(..., help="The entry's sequence number."),
    json_output: bool = typer.Option(False, "--json", help="Print the proof as JSON."),
) -> None:
    """Print an inclusion proof of entry SEQ against the latest checkpoint."""
    proof = backends.backend().audit_prove(seq)
    if json_output:
        output.emit_json(proof)
        return
    output.say(f"entry {seq} ({proof['entry']['action']} {proof['entry']['resource']}) is leaf {proof['leaf_index']} "
               f"of the tree of size {proof['tree_size']} with root {proof['root_hash']}")
    output.say(f"leaf hash {proof['leaf_hash']}")
    for index, node in enumerate(proof["proof"]):
        output.say(f"  {index:2d} {node}")


@audit_app.command("consistency")
def consistency(
    old: int | None = typer.Argument(None, help="The earlier tree size."),
    new: int | None = typer.Argument(None, help="The later tree size (at most the latest checkpoint's)."),
    from_size: int | None = typer.Option(None, "--from-size", help="Instead of OLD NEW: proofs from this tree size "
                                         "(an export's) to every later signed checkpoint, for the standalone "
                                         "verifier's --consistency."),
    json_output: bool = typer.Option(False, "--json", help="Print the proof as JSON."),
) -> None:
    """Print a consistency proof: the tree of size NEW extends the tree of size OLD (or, with
    --from-size N, proofs from N to every later checkpoint)."""
    if from_size is not None:
        if old is not None or new is not None:
            raise typer.BadParameter("give either OLD NEW or --from-size, not both", param_hint="--from-size")
        bundle = backends.backend().audit_consistency_from(from_size)
        if json_output:
            output.emit_json(bundle)
            return
        for item in bundle["proofs"]:
            output.say(f"tree {from_size} (root {bundle['from_root']}) is a prefix of checkpoint tree "
                       f"{item['checkpoint']['tree_size']} (root {item['checkpoint']['root_hash']}): "
                       f"{len(item['proof'])} nodes")
        if not bundle["proofs"]:
            output.say(f"no checkpoint after tree size {from_size}")
        return
    if old is None or new is None:
        raise typer.BadParameter("give OLD and NEW, or --from-size N", param_hint="OLD NEW")
    proof = backends.backend().audit_consistency(old, new)
    if json_output:
        output.emit_json(proof)
        return
    output.say(f"tree {old} (root {proof['old_root']}) is a prefix of tree {new} (root {proof['new_root']})")
    for index, node in enumerate(proof["proof"]):
        output.say(f"  {index:2d} {node}")


@audit_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", help="File to write (the proofs go to OUT.proofs.json)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or csv."),
    since: str | None = SINCE, until: str | None = UNTIL, actor: str | None = ACTOR, action: str | None = ACTION,
    resource: str | None = RESOURCE, outcome: str | None = OUTCOME,
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
    sink: str | None = typer.Option(None, "--sink", help=SINK_HELP),
    queue: bool = typer.Option(False, "--queue", help="Run the export as an audit_export job on the cpu queue, "
                                                     "follow its progress, then write the files here."),
) -> None:
    """Export entries with inclusion proofs, after signing a fresh checkpoint (audited; with --server the
    server signs and exports, and the files are written here)."""
    if fmt not in ("jsonl", "csv"):
        raise typer.BadParameter(f"must be jsonl or csv (got {fmt!r})", param_hint="--format")
    filters = AuditFilters(since=since, until=until, actor=actor, action=action, resource=resource, outcome=outcome)
    if queue:
        if key is not None or sink is not None:
            raise typer.BadParameter("a queued export signs with the workers' key and sink", param_hint="--key/--sink")
        summary = _queued_export(out, fmt=fmt, filters=filters)
    else:
        summary = backends.backend().audit_export(out, fmt=fmt, filters=filters, key=key, sink=sink)
    output.say(f"exported {summary['entries']} entries to {summary['path']} with proofs in {summary['proofs_path']} "
               f"(tree size {summary['tree_size']}, root {summary['root_hash']})")


def _queued_export(out: Path, *, fmt: str, filters: AuditFilters) -> dict[str, Any]:
    """Queue the export, print its progress as the job reports it, and write its files to ``out``."""
    backend = backends.backend()
    job = backend.audit_export_queue(name=out.name, fmt=fmt, filters=filters)
    output.say(f"queued audit export as job {job['id']} on the {job['queue']} queue")
    follow_to_success(job, "no file")
    return backend.audit_export_fetch(int(job["id"]), out)


@audit_app.command("query")
def query(
    since: str | None = SINCE, until: str | None = UNTIL, actor: str | None = ACTOR, action: str | None = ACTION,
    resource: str | None = RESOURCE, outcome: str | None = OUTCOME,
    after: int | None = typer.Option(None, "--after", help="Start after this seq (the previous page's next cursor)."),
    limit: int = typer.Option(50, "--limit", help=f"Entries per page (1 to {compliance.MAX_PAGE})."),
    reveal: bool = typer.Option(False, "--reveal", help="Show who is behind the pseudonyms (compliance officers and "
                                "admins; audited) and, locally, decrypt sealed personal data that is not erased."),
    json_output: bool = typer.Option(False, "--json", help="Print the page as JSON."),
) -> None:
    """Search the trail by time, actor, action, resource and outcome, a page at a time. Actors are
    shown as pseudonyms unless --reveal; --actor alice@example.com finds alice's pseudonym."""
    filters = AuditFilters(since=since, until=until, actor=actor, action=action, resource=resource, outcome=outcome)
    page = backends.backend().audit_query(filters, after=after, limit=limit, reveal=reveal)
    if json_output:
        output.emit_json(page)
        return
    output.table("audit entries", ["seq", "at", "actor", "action", "resource", "outcome", "details"],
                 [[e["seq"], e["at"], e.get("identity") or e["actor"], e["action"], e["resource"], e["outcome"],
                   e.get("details_revealed", e["details"])] for e in page["entries"]])
    if page["next_after"] is not None:
        output.say(f"more: --after {page['next_after']}")


@audit_app.command("public-key")
def public_key(
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
    out: Path | None = typer.Option(None, "--out", help="Write the PEM to this file instead of printing it."),
    current: bool = typer.Option(False, "--current", help="Only the current signing key, not the whole keyring."),
) -> None:
    """Print the checkpoint public keys (PEM keyring: current and rotated-out keys) for auditors."""
    pem = backends.backend().audit_public_keys(key=key, current=current)
    if out is not None:
        out.write_text(pem, encoding="ascii")
        output.say(f"public key{'' if current else 's'} written to {out}")
    else:
        output.say(pem.rstrip())


@audit_app.command("rotate-key")
def rotate_key(
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
    sink: str | None = typer.Option(None, "--sink", help=SINK_HELP),
    reason: str = typer.Option("", "--reason", help="Why (scheduled, staff change, suspected leak, ...)."),
) -> None:
    """Seal the log with the old key, make a new signing key, keep the old public key (audited; this machine's key)."""
    context.require_local()
    key_path = audit_key_path(key)
    with context.session() as db:
        old_id, new_id, first = key_rotation.rotate_key(db, key_path=key_path, sink=audit_sink(sink),
                                                       actor=context.actor(), reason=reason)
        size = first.tree_size
    output.say(f"rotated the audit signing key {old_id} -> {new_id}; the new key signed tree size {size}; "
               f"give auditors the keyring: latentops audit public-key --out latentops-audit.pub")


@audit_app.command("erase")
def erase(
    subject: str = typer.Argument(..., help="The data subject, e.g. user:42."),
    reason: str = typer.Option("", "--reason", help="Why (e.g. the erasure request's reference)."),
) -> None:
    """Crypto-shred a data subject (user:42, an e-mail address or a pseudonym): their personal data,
    their identity behind the pseudonym (audited; hashes stay valid; this machine's database)."""
    context.require_local()
    with context.session() as db:
        done = erasure.erase(db, subject=subject, actor=context.actor(), reason=reason)
    output.say(f"erased {subject}: {done.keys} key(s), {done.payload_keys} data key(s) and {len(done.pseudonyms)} "
               f"identit{'y' if len(done.pseudonyms) == 1 else 'ies'}; their personal data and identity in the trail "
               f"are unreadable (recorded as subject:{done.subject})")


@audit_app.command("retention")
@context.runs_no_model
def retention(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be shredded; change nothing."),
    json_output: bool = typer.Option(False, "--json", help="Print the run as JSON."),
) -> None:
    """Shred personal payloads past their retention period (policy data audit.retention_days) now;
    audited; workers run this hourly (this machine's database)."""
    from latentops.governance import retention as retention_job

    context.require_local()
    with context.session() as db:
        run = retention_job.run(db, actor=context.actor(), dry_run=dry_run)
    if json_output:
        output.emit_json(run.to_json())
        return
    counts = ", ".join(f"{action} {count}" for action, count in sorted(run.by_action.items())) or "none"
    output.say(f"{'would shred' if dry_run else 'shredded'} {run.shredded} personal payload(s) past their retention "
               f"period ({counts})")


audit_app.command("evidence")(audit_evidence.evidence_command)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
