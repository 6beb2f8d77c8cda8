"""``latentops demo``: the main job end to end on the embedded stack, as a new user would see it.

1. Prepare a home: migrate the database, create an admin and an API token, register the
   committed ``digits-demo`` base model.
2. Start the local stack (Redis, one worker, the API) exactly as ``latentops up`` does.
3. Through the REST API, as the admin: fine-tune a LoRA on five images of a glyph the base model
   never saw (a job on the real queue, watched to the end), then generate with it and with the
   base model through the governed path, and save the released images.
4. Show governance at work: a prompt that names a protected character is refused with reasons,
   and the audit trail verifies.
5. Stop the stack.

No content detector ships offline, so the demo allows unscreened images to be released: a policy
data edit that is audited and printed, never a silent switch.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import typer

from latentops.core.errors import NotFound, PolicyDenied, ServiceUnavailable
from latentops.platform.cli import context, output
from latentops.platform.stack import free_port

DEMO_USER = "demo@latentops.local"
DEMO_TEAM = "demo"
GLYPH = "A"
GLYPH_PROMPT = "a handwritten letter A"
DENIED_PROMPT = "Mickey Mouse writing a handwritten digit seven"
# The fine-tune recipe: enough to make the letter recognisable (tests/test_demo_learning.py judges
# it, not by the loss), in well under a minute of training on a laptop CPU.
STEPS = 150
RECIPE = {"method": "lora", "rank": 8, "lr": 2e-3, "resolution": 32, "batch_size": 5, "samples": False}


def _glyph_images(count: int = 5) -> list[tuple[str, bytes]]:
    """Five hand-drawn-looking renderings of the glyph, each with its own stroke and position."""
    from PIL import Image, ImageDraw

    images = []
    for index in range(count):
        canvas = Image.new("RGB", (64, 64), "white")
        draw = ImageDraw.Draw(canvas)
        dx, width = (index % 3) - 1, 5 + index % 2
        draw.line([(14 + dx, 54), (32 + dx, 10), (50 + dx, 54)], fill="black", width=width)
        draw.line([(22 + dx, 38), (42 + dx, 38)], fill="black", width=width)
        buffer = io.BytesIO()
        canvas.save(buffer, format="PNG")
        images.append((f"glyph-{index}.png", buffer.getvalue()))
    return images


def _prepare() -> str:
    """Steps 1: database, admin, token, base model, the demo's audited policy relaxation."""
    from latentops.governance import policy, screening
    from latentops.platform import migrate
    from latentops.platform.services import models as models_service
    from latentops.platform.services import tokens, users

    settings = context.settings()
    settings.ensure_home()
    migrate.upgrade(settings.database_url)
    actor = context.actor()
    with context.session() as db:
        try:
            users.get_user_by_email(db, DEMO_USER)
        except NotFound:
            users.create_user(db, email=DEMO_USER, role="admin", team=DEMO_TEAM, password=None, actor=actor)
        _, secret = tokens.create_token(db, email=DEMO_USER, name="demo", actor=actor, expires_in_days=1)
        assert settings.model_store is not None
        version = models_service.bootstrap_demo(db, actor=actor, store_root=settings.model_store)
        output.say(f"1. base model digits-demo v{version.version} ({version.content_hash[:12]}) registered")
        if not policy.policy_data("screening.release_without_detector"):
            policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor=actor,
                                   note="demo: no content detector is available offline")
            output.say("   [yellow]safeguard relaxed for the demo:[/] images without a content detector may be "
                       "released (policy data edit, audited)")
        if "nsfwjs" in screening.status(settings)["detectors"]:
            # nsfwjs judges photographs; on the demo's 32-pixel digits it reads about half as nudity.
            screening.configure_detector(db, settings=settings, kind="nsfwjs", path=None, actor=actor, enabled=False)
            output.say("   [yellow]nudity detector off for the demo home:[/] nsfwjs is made for photographs, not "
                       "32-pixel digits (audited; `latentops screening detector nsfwjs` turns it back on)")
    return secret


def _start_stack(port: int) -> subprocess.Popen[bytes]:
    stack = subprocess.Popen([sys.executable, "-m", "latentops.platform.cli.main", "up", "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            raise ServiceUnavailable(f"the stack exited with code {stack.returncode} during start-up; "
                                     f"see {context.settings().home / 'logs'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5).json().get("status") == "ok":
                output.say(f"2. stack up at http://127.0.0.1:{port} (API, worker, Redis)")
                return stack
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stack.terminate()
    raise ServiceUnavailable("the stack did not become healthy within 120s")


def _watch(client: Any, job_id: int, label: str) -> Any:
    """Follow a job's progress with a bar until it ends; return the finished job."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"   {label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=output.console) as bar:
        task = bar.add_task(label, total=None)
        while True:
            job = client.jobs.get(job_id)
            progress = job.get("progress") or {}
            if progress.get("total"):
                bar.update(task, total=progress["total"], completed=progress.get("step", 0))
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)


def _generate(client: Any, out: Path, *, prompt: str, lora: str | None, n: int) -> list[Path]:
    job = client.generations.create(model="digits-demo", lora=lora, prompt=prompt, n=n, seed=0, steps=20,
                                    guidance=4.0, team=DEMO_TEAM)
    finished = _watch(client, job["id"], f"generate {prompt!r}" + (f" + {lora}" if lora else ""))
    if finished["state"] != "succeeded":
        raise ServiceUnavailable(f"generation job {job['id']} {finished['state']}: {finished.get('error')}")
    saved = []
    for image in client.generations.get(job["id"])["images"]:
        if image["status"] == "released":
            path = out / f"{'lora' if lora else 'base'}-{image['asset_id']}.png"
            path.write_bytes(client.assets.image(image["asset_id"]))
            saved.append(path)
        else:
            output.say(f"   asset {image['asset_id']} {image['status']} (kept for compliance review)")
    return saved


def demo(port: int = typer.Option(0, help="API port for the demo stack (0 picks a free one)."),
         steps: int = typer.Option(STEPS, min=10, max=2000, help="Fine-tuning steps.")) -> None:
    """Run the main job end to end on the embedded stack: fine-tune, generate, govern, verify, stop."""
    context.require_local()
    from latentops.client import Client

    settings = context.settings()
    output.say(f"[bold]latentops demo[/] in {settings.home}")
    token = _prepare()
    port = port or free_port()
    stack = _start_stack(port)
    out = settings.home / "demo-output"
    out.mkdir(exist_ok=True)
    try:
        # A generous timeout: on a busy laptop the embedded SQLite database may keep a reader waiting.
        with Client(f"http://127.0.0.1:{port}", token, timeout=180) as client:
            # 3. The main job: a LoRA fine-tune on the real queue, then generation with it.
            job = client.finetune.submit(
                model="digits-demo", images=_glyph_images(), instance_prompt=GLYPH_PROMPT, team=DEMO_TEAM,
                adapter_name="demo-letter-a", attest_licence=True, attest_consent=True,
                params={**RECIPE, "steps": steps, "checkpoint_every": max(steps // 3, 1)},
            )
            output.say(f"3. fine-tune job {job['id']} queued: LoRA on 5 images of the letter {GLYPH}")
            finished = _watch(client, job["id"], "fine-tune")
            if finished["state"] != "succeeded":
                raise ServiceUnavailable(f"fine-tune job {job['id']} {finished['state']}: {finished.get('error')}")
            result = finished.get("result") or {}
            adapter = result.get("adapter") or "demo-letter-a"
            output.say(f"   adapter {adapter} registered; final loss {result.get('final_loss', 'n/a')}")
            saved = _generate(client, out, prompt=GLYPH_PROMPT, lora=adapter, n=4)
            _say_learned(saved)
            saved += _generate(client, out, prompt="a handwritten digit seven", lora=None, n=4)
            output.say(f"   {len(saved)} released images with content credentials in {out}")
            # 4. Governance at work.
            try:
                client.generations.create(model="digits-demo", prompt=DENIED_PROMPT, team=DEMO_TEAM)
                output.say("   [red]the protected-name prompt was not refused[/]")
                raise typer.Exit(1)
            except PolicyDenied as denied:
                output.say(f"4. refused {DENIED_PROMPT!r}: " + "; ".join(str(r) for r in denied.reasons))
            report = client.audit.verify()
            output.say(f"   audit trail: {_describe(report)}")
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(90)
        output.say("5. stack stopped")


def _say_learned(samples: list[Path]) -> None:
    """How many adapter samples read as the letter (``digits.glyph_verdict``): learning, shown."""
    from PIL import Image

    from latentops.pipelines.demo import digits

    if not samples:
        return
    drawings = digits.pil_to_tensor([Image.open(io.BytesIO(data)) for _, data in _glyph_images()])
    verdict = digits.glyph_verdict(digits.pil_to_tensor([Image.open(path) for path in samples]), drawings)
    output.say(f"   {verdict.recognised} of {len(samples)} adapter samples read as the letter {GLYPH} (their ink "
               f"correlates with the drawings above {verdict.bar:.2f}, more than any real digit does)")


def _describe(report: Any) -> str:
    data = report if isinstance(report, dict) else getattr(report, "__dict__", {})
    ok = data.get("ok", data.get("intact"))
    entries = data.get("entries", data.get("size", data.get("tree_size", "?")))
    return f"{'intact' if ok else 'DAMAGED'}, {entries} entries verified"


def register(app: typer.Typer) -> None:
    app.command()(demo)
