"""``latentops screen``, ``screening``, ``copyright``, ``provenance`` and ``quarantine`` commands."""

from __future__ import annotations

from pathlib import Path

import typer

from latentops.platform.cli import backends, context, output

screening_app = typer.Typer(help="Content screening: CLIP weights, detectors, calibration, status.", no_args_is_help=True)
copyright_app = typer.Typer(help="The copyright reference index and licence grants.", no_args_is_help=True)
provenance_app = typer.Typer(help="C2PA content credentials and watermarks.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Quarantined images: review, release, reject (compliance officers).", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print the result as one line of JSON.")


def screen(
    image: Path = typer.Argument(..., help="The image file to screen."),
    team: str = typer.Option("", "--team", help="Team whose licence grants apply."),
    json_output: bool = JSON,
) -> None:
    """Screen one image: content scores, copyright matches, verdict (recorded and audited)."""
    payload = backends.backend().screen(image, team=team or None)
    if json_output:
        output.emit_json(payload)
        return
    output.say(f"{image}: {payload['verdict']} (detector {payload['content']['detector']})")
    for category, score in sorted(payload["content"]["scores"].items()):
        output.say(f"  {category}: {score:.4f}")
    for match in payload["copyright"]["matches"]:
        output.say(f"  matches reference {match['reference_id']} of {match['owner']} ({match['method']}, {match['score']})")
    for reason in payload["reasons"]:
        output.say(f"  - {reason}")


@screening_app.command("import-clip")
def import_clip(
    arch: str | None = typer.Option(None, "--arch", help="open_clip architecture of --weights, e.g. ViT-B-32."),
    weights: Path | None = typer.Option(None, "--weights", help="Local weights file (state dict, .pt/.bin/.safetensors)."),
    pretrained: str | None = typer.Option(
        None, "--pretrained", metavar="ARCH/TAG",
        help="Fetch open_clip's published weights instead, e.g. ViT-B-32/laion2b_s34b_b79k (Hugging Face Hub)."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Download cache for --pretrained (default: the Hugging Face cache, HF_HUB_CACHE)."),
    list_pretrained: bool = typer.Option(False, "--list-pretrained", help="Print the names --pretrained accepts and exit."),
    config: Path | None = typer.Option(None, "--config", help="Model config JSON for an architecture open_clip lacks."),
    json_output: bool = JSON,
) -> None:
    """Import CLIP weights for content screening and copyright embeddings: a local file (--weights
    with --arch) or open_clip's published weights (--pretrained ARCH/TAG; HF_HUB_OFFLINE=1 uses the cache only)."""
    from latentops.governance import clip, screening

    if list_pretrained:
        names = clip.pretrained_names()
        if json_output:
            output.emit_json(names)
        else:
            for name in names:
                output.say(name)
        return
    if (weights is None) == (pretrained is None):
        raise typer.BadParameter("give exactly one of --weights FILE (with --arch) or --pretrained ARCH/TAG",
                                 param_hint="'--weights' / '--pretrained'")
    if weights is not None and not arch:
        raise typer.BadParameter("--weights needs the open_clip architecture of the file", param_hint="'--arch'")
    if pretrained is not None and arch:
        raise typer.BadParameter("--pretrained names its architecture itself (ARCH/TAG); leave out --arch",
                                 param_hint="'--arch'")
    settings = context.settings()  # refuses --server before anything is downloaded
    source = None
    if pretrained is not None:
        fetched = clip.fetch_pretrained(pretrained, cache_dir=cache_dir)
        arch, weights, source = fetched.arch, fetched.path, fetched.source
    assert arch is not None and weights is not None
    with context.session() as db:
        result = screening.import_clip(db, settings=settings, arch=arch, weights=weights, config=config,
                                       actor=context.actor())
    if source is not None:
        result = {**result, "pretrained": pretrained, "fetched_from": source}
    if json_output:
        output.emit_json(result)
    else:
        output.say(f"CLIP {result['arch']} imported (sha256 {result['sha256'][:16]})"
                   + (f" from {source}" if source else ""))


@screening_app.command("detector")
def detector(
    kind: str = typer.Argument(..., help="safety_checker, nudenet or nsfwjs."),
    path: Path | None = typer.Option(None, "--path", help="Folder of the safety checker (diffusers format) or of a converted nsfwjs."),
    off: bool = typer.Option(False, "--off", help="Turn the detector off (logged and audited)."),
) -> None:
    """Turn a pluggable detector on or off."""
    from latentops.governance import screening

    with context.session() as db:
        config = screening.configure_detector(db, settings=context.settings(), kind=kind, path=path,
                                              actor=context.actor(), enabled=not off)
    output.say(f"detectors configured: {', '.join(sorted(config)) or 'none besides CLIP'}")


@screening_app.command("status")
@context.runs_no_model
def status(json_output: bool = JSON) -> None:
    """What screens images now, which detector covers each category; says loudly what is not screened."""
    report = backends.backend().screening_status()
    if json_output:
        output.emit_json(report)
        return
    output.say(f"detectors: {', '.join(report['detectors']) or 'none'}")
    if report.get("clip"):
        output.say(f"CLIP: {report['clip']['arch']} (sha256 {report['clip']['sha256'][:16]})")
    state = report["nsfwjs"]
    output.say(f"nsfwjs: {state['state']}" + (f" ({state['package']}, sha256 {state['weights_sha256'][:16]})"
                                                if state["state"] == "active" else f" (looked for in {state['folder']})"))
    output.table("coverage", ["category", "detectors", "threshold"],
                 [(c, ", ".join(names) or "NONE", (report.get("thresholds") or {}).get(c, "-"))
                  for c, names in report["coverage"].items()])
    if report.get("warning"):
        output.error(f"WARNING: {report['warning']}")
    if not report["real_detector"]:
        output.error(f"release without detector (policy): {report.get('release_without_detector')}")
    elif report["uncovered"]:
        output.error(f"uncovered categories (policy): images {report['uncovered_images']}")


@screening_app.command("calibrate")
def calibrate(
    images: Path = typer.Option(..., "--images", help="Folder of labelled images."),
    labels: Path = typer.Option(..., "--labels", help="labels.csv: file,<category>,... with 0/1 values."),
    target_fpr: float = typer.Option(0.01, "--target-fpr", help="Highest false-positive rate per category."),
    json_output: bool = JSON,
) -> None:
    """Fit per-category thresholds and store them as a new policy-data revision (audited).

    With --server the labels file and the images it names are uploaded, and the server's detectors
    are fitted (POST /screening/calibrate)."""
    payload = backends.backend().screening_calibrate(images=images, labels=labels, target_fpr=target_fpr)
    if json_output:
        output.emit_json(payload)
        return
    output.table(f"thresholds (revision {payload['revision'][:12]})", ["category", "threshold", "FPR", "FNR", "pos", "neg"],
                 [(c, f"{v['threshold']:.6f}", f"{v['fpr']:.4f}", "-" if v["fnr"] is None else f"{v['fnr']:.4f}",
                   v["positives"], v["negatives"]) for c, v in payload["categories"].items()])
    for failure in payload["failures"]:
        output.error(f"{failure['file']}: {failure['reason']}")


@copyright_app.command("add")
def copyright_add(
    directory: Path = typer.Argument(..., help="Folder of protected works."),
    owner: str = typer.Option(..., "--owner", help="The rights holder."),
    licence: str = typer.Option(..., "--licence", help="Licence under which the works are held."),
    json_output: bool = JSON,
    queue: bool = typer.Option(False, "--queue", help="Index it as a copyright_index job on the cpu queue (per-file "
                                                     "progress: latentops jobs watch ID); for large folders."),
) -> None:
    """Add the images of a folder to the reference index; unreadable files are listed."""
    if queue:
        queued = backends.backend().copyright_queue(directory=directory, owner=owner, licence=licence)
        if json_output:
            output.emit_json({"jobs": [job["id"] for job in queued]})
            return
        for job in queued:
            output.say(f"queued copyright index of {directory} as job {job['id']} on the {job['queue']} queue; "
                       f"follow it with: latentops jobs watch {job['id']}")
        return
    report = backends.backend().copyright_add(directory=directory, owner=owner, licence=licence)
    if json_output:
        output.emit_json(report)
    else:
        output.say(f"added {len(report['added'])} references, {len(report['duplicates'])} already indexed, "
                   f"{len(report['failures'])} failed")
        for failure in report["failures"]:
            output.error(f"{failure['file']}: {failure['reason']}")
    if report["failures"] and not report["added"] and not report["duplicates"]:
        raise typer.Exit(1)


@copyright_app.command("list")
def copyright_list(
    owner: str = typer.Option("", "--owner", help="Only this rights holder."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many references (id order)."),
    limit: int = typer.Option(1000, "--limit", min=1, max=100_000, help="At most this many references."),
    json_output: bool = JSON,
) -> None:
    """List references in the index."""
    rows = backends.backend().copyright_list(owner=owner or None, offset=offset, limit=limit)
    if json_output:
        output.emit_json(rows)
    else:
        output.table("copyright references", ["id", "owner", "licence", "title", "embedded"],
                     [(r["id"], r["owner"], r["licence"], r["title"], r["embedded"]) for r in rows])


@copyright_app.command("grant")
def copyright_grant(
    team: str = typer.Option(..., "--team", help="The licensed team."),
    owner: str = typer.Option(..., "--owner", help="The rights holder whose works are licensed."),
    reference: int | None = typer.Option(None, "--reference", help="Only this reference id."),
    note: str = typer.Option("", "--note", help="Contract or ticket reference."),
) -> None:
    """Record a licence grant: the team may use (and train on) the owner's works."""
    from latentops.governance import copyright

    with context.session() as db:
        licence = copyright.grant_licence(db, team=team, owner=owner, reference_id=reference, note=note, actor=context.actor())
        licence_id = licence.id
    output.say(f"licence {licence_id} granted to {team} for {owner}")


@provenance_app.command("verify")
def provenance_verify(image: Path = typer.Argument(..., help="A released image."), json_output: bool = JSON) -> None:
    """Read the C2PA manifest and the watermark and resolve the asset to its audit record."""
    from latentops.governance import provenance

    with context.session() as db:
        result = provenance.verify(db, settings=context.settings(), path=image)
    if json_output:
        output.emit_json(result)
    else:
        manifest = result["manifest"] or {}
        output.say(f"{image}: {result['verdict']}")
        output.say(f"  C2PA: {manifest.get('validation_state', 'none')} {manifest.get('validation_status') or ''}")
        output.say(f"  watermark asset id: {result['watermark']['asset_id']}")
        if result["asset"]:
            output.say(f"  asset {result['asset']['id']} ({result['asset']['status']})")
        if result["audit_entry"]:
            entry = result["audit_entry"]
            output.say(f"  audit entry {entry['seq']}: {entry['action']} {entry['resource']} by {entry['actor']}")
    if result["verdict"] != "verified":
        raise typer.Exit(1)


@provenance_app.command("use-chain")
def provenance_use_chain(
    chain: Path = typer.Option(..., "--chain", help="PEM certificate chain, signing certificate first."),
    key: Path = typer.Option(..., "--key", help="PEM private key of the signing certificate."),
    anchors: Path | None = typer.Option(None, "--anchors", help="PEM trust anchors used by verify."),
) -> None:
    """Sign content credentials with the organisation's certificate chain instead of the local CA."""
    from latentops.governance import provenance

    with context.session() as db:
        result = provenance.use_chain(db, settings=context.settings(), chain=chain, key=key, anchors=anchors,
                                      actor=context.actor())
    output.say(f"signing with {result['subject']} ({result['alg']})")


@quarantine_app.command("list")
@context.runs_no_model
def quarantine_list(
    status: str = typer.Option("quarantined", "--status", help="quarantined or rejected."),
    json_output: bool = JSON,
) -> None:
    """Quarantined images with their scores and reasons."""
    rows = backends.backend().quarantine_list(status)
    if json_output:
        output.emit_json(rows)
    else:
        output.table(f"{status} images", ["asset", "created", "reasons", "matches"],
                     [(r["asset_id"], r["created_at"], "; ".join(r["reasons"]), len(r["matches"])) for r in rows])


@quarantine_app.command("release")
@context.runs_no_model
def quarantine_release(
    asset_id: int = typer.Argument(..., help="The quarantined asset."),
    reason: str = typer.Option(..., "--reason", help="Why it may be released (recorded)."),
) -> None:
    """Release a quarantined image (provenance is applied)."""
    path = backends.backend().quarantine_release(asset_id, reason)["path"]
    output.say(f"asset {asset_id} released" + (f": {path}" if path else ""))


@quarantine_app.command("reject")
@context.runs_no_model
def quarantine_reject(
    asset_id: int = typer.Argument(..., help="The quarantined asset."),
    reason: str = typer.Option(..., "--reason", help="Why it is rejected (recorded)."),
) -> None:
    """Reject a quarantined image; it is kept as evidence and never released."""
    backends.backend().quarantine_reject(asset_id, reason)
    output.say(f"asset {asset_id} rejected")


def register(app: typer.Typer) -> None:
    app.command("screen")(screen)
    app.add_typer(screening_app, name="screening")
    app.add_typer(copyright_app, name="copyright")
    app.add_typer(provenance_app, name="provenance")
    app.add_typer(quarantine_app, name="quarantine")
