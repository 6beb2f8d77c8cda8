"""``latentops generate``: images from a prompt, through the governed path, into a folder.

A denied prompt (or model or adapter access) prints the policy's reasons and exits 1; nothing is
generated. When every image was held for review, it says where they are and what would release
them, and exits 3 (``output.EXIT_NOTHING_RELEASED``). Released images are written as signed PNGs (C2PA manifest, watermark where
the image is large enough); quarantined ones are reported by asset id and never written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latentops.platform.cli import backends, output
from latentops.platform.cli.backends import GenerateOptions


def generate(
    model: Annotated[str, typer.Option("--model", help="NAME, NAME@alias or NAME@version.")],
    prompt: Annotated[str, typer.Option("--prompt", help="The prompt.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the released images.")],
    lora: Annotated[str | None, typer.Option("--lora", help="LoRA adapter: NAME or NAME@alias|version.")] = None,
    negative_prompt: Annotated[str | None, typer.Option("--negative-prompt", help="What to steer away from.")] = None,
    count: Annotated[int, typer.Option("-n", "--count", help="Number of images.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first image; image i uses seed + i.")] = 0,
    steps: Annotated[int, typer.Option("--steps", help="Denoising steps.")] = 20,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale.")] = 5.0,
    team: Annotated[str | None, typer.Option("--team", help="Team the images are for (when you have several).")] = None,
    as_user: Annotated[str | None, typer.Option("--as", help="Act as this user (email) instead of the console (local only).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Generate images with a catalogued model (and adapter), governed end to end (with --server: queued on the
    server, followed to its end, and the released images downloaded)."""
    request = GenerateOptions(model=model, prompt=prompt, lora=lora, negative_prompt=negative_prompt, count=count,
                                seed=seed, steps=steps, guidance=guidance, team=team, as_user=as_user)
    summary, pngs = backends.backend().generate(request)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for image in summary["images"]:
        if image["asset_id"] in pngs:
            path = out / f"asset-{image['asset_id']}-seed{image['seed']}.png"
            path.write_bytes(pngs[image["asset_id"]])
            written.append(str(path))
    if json_output:
        output.emit_json({**summary, "files": written})
    else:
        _report(summary, pngs, written)
    if summary["images"] and not written:
        if not json_output:
            output.nothing_released(len(summary["images"]), [image["asset_id"] for image in summary["images"]])
        raise typer.Exit(output.EXIT_NOTHING_RELEASED)


def _report(summary: dict, pngs: dict[int, bytes], written: list[str]) -> None:
    for written_path in written:
        output.say(f"released {written_path}")
    for image in summary["images"]:
        if image["asset_id"] not in pngs:
            output.say(f"quarantined asset {image['asset_id']} (seed {image['seed']}): {'; '.join(image['reasons'])}")
    output.say(f"{len(written)} released, {len(summary['images']) - len(written)} quarantined ({summary['target']})")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
