"""``latentops policy``: run the Rego tests, evaluate inputs, check prompts, reload, show the revision."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from latentops.core.errors import InvalidInput, ServiceUnavailable
from latentops.governance import policy
from latentops.governance.policy_bundle import DEFAULT_POLICY_DIR, load_bundle, write_tarball
from latentops.governance.policy_engine import CompileError, EmbeddedEngine
from latentops.governance.policy_opa import OpaEngine
from latentops.governance.policy_testing import run_tests
from latentops.platform.cli import backends, context, output

policy_app = typer.Typer(help="Policy-as-code: tests, evaluation, revisions.", no_args_is_help=True)


@policy_app.command("test")
@context.runs_no_model
def test(
    directory: Path = typer.Option(DEFAULT_POLICY_DIR, "--dir", help="Policy folder."),
    engine: str = typer.Option("embedded", "--engine", help="embedded, or opa (uses LATENTOPS_OPA_URL)."),
    min_coverage: float = typer.Option(0.0, "--min-coverage", help="Fail below this rule-id coverage (percent)."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run every Rego test with rule-id coverage; fails on a failing test or when there are none (this machine's files)."""
    context.require_local()
    bundle = load_bundle(directory)
    if engine == "opa":
        runner = OpaEngine(context.settings().opa_url)
        runner.load(bundle, with_tests=True)
    else:
        runner = EmbeddedEngine()
        try:
            runner.load(bundle, for_tests=True)
        except CompileError as error:
            raise InvalidInput(f"policies: {error}") from None
    report = run_tests(bundle, runner)
    summary = report.summary()
    if json_output:
        output.emit_json(summary)
    else:
        for result in report.results:
            output.say(f"{'PASS' if result.passed else 'FAIL'}: data.{result.package.replace('/', '.')}.{result.name}"
                       + (f" ({result.error})" if result.error else ""))
        output.say(f"{summary['passed']}/{summary['tests']} tests passed; rule-id coverage {summary['coverage']}% "
                   f"({summary['covered']}/{summary['rule_ids']})")
        for rule_id in summary["uncovered"]:
            output.say(f"  not covered: {rule_id}")
    if not report.results:
        raise InvalidInput(f"policies: no tests found in {directory}")
    if report.failed:
        raise typer.Exit(1)
    if report.coverage < min_coverage:
        raise InvalidInput(f"coverage: {report.coverage:.1f}% is below --min-coverage {min_coverage}%")


def _parse_input(raw: str) -> dict[str, object]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"input: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"input: must be a JSON object, got {type(value).__name__}")
    return value


@policy_app.command("eval")
@context.runs_no_model
def eval_(
    path: str = typer.Option(..., "--path", help="Policy path: prompt, jobs, models, datasets, screening."),
    input_json: str = typer.Option(..., "--input", help="The input as a JSON object."),
) -> None:
    """Evaluate one input and print the decision as JSON (the decision is recorded); exits 1 when it is denied."""
    decision = backends.backend().decide(path, _parse_input(input_json))
    output.emit_json(decision)
    if not decision["allow"]:
        raise typer.Exit(1)


@policy_app.command("check-prompt")
@context.runs_no_model
def check_prompt(
    text: str = typer.Argument(..., help="The prompt to check."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line: allow, reasons, rule_ids, revision and "
                                     "categories (per content category: severity 0-6, the level it blocks at, score, evidence)."),
) -> None:
    """Check a prompt against the prompt policy; exits 1 when it is denied."""
    decision = backends.backend().check_prompt(text)
    if json_output:
        output.emit_json({key: decision[key] for key in ("allow", "reasons", "rule_ids", "revision", "categories") if key in decision})
        if not decision["allow"]:
            raise typer.Exit(1)
        return
    output.say(f"{'allowed' if decision['allow'] else 'denied'} (revision {decision['revision'][:12]})")
    for rule_id, reason in zip(decision["rule_ids"], decision["reasons"], strict=True):
        output.say(f"  {rule_id}: {reason}")
    for name, category in sorted(decision.get("categories", {}).items()):
        if category["severity"]:
            output.say(f"  {name}: severity {category['severity']} of 6 (blocks at {category['blocks_at']}); {category['evidence']}")
    if not decision["allow"]:
        raise typer.Exit(1)


@policy_app.command("reload")
@context.runs_no_model
def reload() -> None:
    """Load the policy files and data edits now; a bundle that fails keeps the previous revision."""
    with context.session() as db:
        result = policy.reload(db)
    if not result.ok:
        raise InvalidInput(f"policies: {result.error} (revision {result.revision[:12] or 'none'} stays in force)")
    output.emit_json({"revision": result.revision, "changed": result.changed})


@policy_app.command("revision")
@context.runs_no_model
def revision(json_output: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the revision in force, the engine and the paths."""
    status = backends.backend().policy_status()
    if not status["revision"]:
        raise ServiceUnavailable(f"no policy revision is in force: {status['last_error']}")
    if json_output:
        output.emit_json(status)
    else:
        output.say(str(status["revision"]))


@policy_app.command("set-data")
@context.runs_no_model
def set_data(
    key: str = typer.Argument(..., help="Dotted key, e.g. prompt.max_length."),
    value: str = typer.Argument(..., help="The new value as JSON."),
    note: str = typer.Option("", help="Why the change is made (kept in the audit trail; required with --server)."),
) -> None:
    """Edit policy data (shape-checked, compiled, Rego-tested, audited; a new revision)."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"value: not valid JSON ({error.msg})") from None
    result = backends.backend().policy_set_data(key, parsed, note=note)
    output.emit_json({"key": result["key"], "revision": result["revision"], "edit": result["edit"]["id"]})


def _short(value: object, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return escape(text if len(text) <= width else text[:width - 3] + "...")


@policy_app.command("history")
@context.runs_no_model
def history(
    key: str = typer.Option("", "--key", help="Only edits of this key or below it (screening, screening.thresholds)."),
    limit: int = typer.Option(20, "--limit", min=1, max=200, help="How many revisions, newest first."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many of the newest."),
    json_output: bool = typer.Option(False, "--json", help="Print the page as one JSON line."),
) -> None:
    """The policy-data revisions (edits), newest first: id, time, actor, key, value and note."""
    page = backends.backend().policy_history(key=key or None, offset=offset, limit=limit)
    if json_output:
        output.emit_json(page)
        return
    output.table(f"policy data revisions ({page['total']})", ["revision", "at", "actor", "key", "value", "note"],
                 [(item["id"], (item["at"] or "")[:19], escape(item["actor"]), escape(item["key"]), _short(item["value"]),
                   escape(item["note"]))
                  for item in page["items"]])
    if page["next_offset"] is not None:
        output.say(f"more: --offset {page['next_offset']}")


@policy_app.command("diff")
@context.runs_no_model
def diff(
    to: int = typer.Argument(..., help="The revision (edit id) to show; 0 is the policy files' data."),
    since: int | None = typer.Option(None, "--from", help="Compare with this revision (default: the one before)."),
    json_output: bool = typer.Option(False, "--json", help="Print the diff as one JSON line."),
) -> None:
    """What a revision changed in the policy data, per dotted key."""
    found = backends.backend().policy_diff(to, since=since)
    if json_output:
        output.emit_json(found)
        return
    output.say(f"revision {found['from']} -> {found['to']}: {len(found['changes'])} change(s)")
    for change in found["changes"]:
        if "before" in change or "after" in change:
            output.say(f"  {escape(change['key'])}: {_short(change.get('before'))} -> {_short(change.get('after'))}"
                       if change["change"] == "changed" else f"  {escape(change['key'])} {change['change']}: "
                       f"{_short(change.get('after', change.get('before')))}")
        else:
            output.say(f"  {escape(change['key'])}: {len(change['added'])} added, {len(change['removed'])} removed")


@policy_app.command("rollback")
@context.runs_no_model
def rollback(
    to: int = typer.Argument(..., help="The revision (edit id) whose data is restored; 0 is the policy files' data."),
    note: str = typer.Option(..., "--note", help="Why (required; kept with the edits and in the audit trail)."),
) -> None:
    """Restore a revision's policy data with new, audited edits (the history keeps everything)."""
    result = backends.backend().policy_rollback(to, note=note)
    output.emit_json({"revision": result["revision"], "restored": result["restored"],
                      "edits": [edit["id"] for edit in result["edits"]], "keys": [edit["key"] for edit in result["edits"]]})


@policy_app.command("bundle")
@context.runs_no_model
def bundle(target: Path = typer.Option(..., "--output", help="Where to write the OPA bundle (.tar.gz).")) -> None:
    """Write the policies and data as an OPA bundle for an OPA server or sidecar (this machine's files)."""
    context.require_local()
    built = load_bundle()
    write_tarball(built, target)
    output.emit_json({"path": str(target), "revision": built.revision})


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
