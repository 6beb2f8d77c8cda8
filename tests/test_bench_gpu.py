"""bench/gpu_finetune.py: the GPU benchmark against diffusers' own DreamBooth-LoRA scripts, exercised on the CPU.

The dry run builds the tiny models, runs diffusers' unmodified scripts (``../shared/peers``) and
``latentops finetune run`` through the benchmark's probe, and writes the report the GPU run writes.
The full-size models are checked on the meta device: their widths fit together and the SD1.5 UNet
has the real one's parameter count.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_finetune", ROOT / "bench" / "gpu_finetune.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_finetune"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _run(out: Path, *args: str, peers: Path = PEERS) -> tuple[subprocess.CompletedProcess[str], dict]:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_finetune.py"), "--dry-run", "--out", str(out),
                           "--peers", str(peers), *args], capture_output=True, text=True, cwd=ROOT, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads((out / "report.json").read_text())


def _peer_args(command: list[str]) -> dict[str, str]:
    return {flag.removeprefix("--"): value for flag, value in zip(command[1::2], command[2::2], strict=True)}


requires_peers = pytest.mark.skipif(not (PEERS / "train_dreambooth_lora.py").exists(),
                                    reason="diffusers' scripts are not in ../shared/peers")


@pytest.mark.slow
@requires_peers
def test_dry_run_trains_every_family_on_both_sides_and_reports_it(tmp_path: Path) -> None:
    done, report = _run(tmp_path / "out", "--families", "sd1,sdxl,flux", "--rounds", "1")
    assert report["mode"].startswith("dry-run") and report["device"] == "cpu"
    assert report["skipped"] == [] and 0 < report["elapsed_s"] < report["deadline_s"]
    assert set(report["families"]) == {"sd1", "sdxl", "flux"}
    for name, family in report["families"].items():
        assert family["status"] == "done", family.get("failed")
        assert (family["resolution"], family["batch"], family["rank"], family["steps"]) == (64, 1, 4, 4)
        assert [(run["side"], run["round"]) for run in family["runs"]] == [("peer", 1), ("ours", 1)]
        for side in ("peer", "ours"):
            row = family[side]
            assert 0 < row["s_per_step"] < 120, (name, side, row)
            assert row["peak_rss_mb"] > 100 and row["peak_allocated_mb"] is None
            assert list(row["loss_at_steps"]) == ["1", "2", "4"]
            assert all(math.isfinite(v) and 0 < v < 10 for v in row["loss_at_steps"].values()), row
        # Both train the same LoRA: the same number of parameters in the optimizer.
        assert family["peer"]["trainable_parameters"] == family["ours"]["trainable_parameters"] > 0, name
        assert family["ratio"] == pytest.approx(family["peer"]["s_per_step"] / family["ours"]["s_per_step"], rel=0.01)
        # Each side's log starts with its command line: diffusers' own script, and our CLI.
        peer_log, ours_log = (Path(run["log"]).read_text() for run in family["runs"])
        assert str(PEERS / family["script"]) in peer_log.splitlines()[0]
        assert "finetune run --config" in ours_log.splitlines()[0]
    table = done.stdout
    for name in ("sd1", "sdxl", "flux"):
        assert f"\n{name:<7}peer " in table and f"\n{name:<7}ours " in table
    assert "ratio = peer / latentops" in table


@pytest.mark.slow
@requires_peers
def test_a_family_failing_on_one_side_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    peers = tmp_path / "peers"
    peers.mkdir()
    # An SD1 script that stops with an error; FLUX is diffusers' own.
    (peers / "train_dreambooth_lora.py").write_text("import sys\nprint('cannot load the weights')\nsys.exit(3)\n")
    (peers / "train_dreambooth_lora_flux.py").symlink_to(PEERS / "train_dreambooth_lora_flux.py")
    done, report = _run(tmp_path / "out", "--families", "sd1,flux", "--rounds", "2", "--steps", "3", peers=peers)
    sd1, flux = report["families"]["sd1"], report["families"]["flux"]
    assert (sd1["status"], flux["status"]) == ("failed", "done")
    assert sd1["failed"].startswith("peer round 1: exit code 3") and "cannot load the weights" in sd1["failed"]
    assert [run["side"] for run in sd1["runs"]] == ["peer"]  # its later runs are skipped
    assert "sd1: FAILED peer round 1" in done.stdout
    # Interleaved: peer then ours in round 1, ours then peer in round 2.
    assert [(run["side"], run["round"]) for run in flux["runs"]] == [("peer", 1), ("ours", 1), ("ours", 2), ("peer", 2)]
    assert "failed" not in flux and len(flux["ours"]["s_per_step_rounds"]) == 2 and flux["ratio"] > 0
    # Same seed, same inputs: each side repeats its own losses from one round to the next.
    for side in ("peer", "ours"):
        first, second = (run["losses"] for run in flux["runs"] if run["side"] == side)
        assert len(first) == 3 and first == pytest.approx(second, rel=1e-5), side


def test_the_wrapper_runs_the_benchmark_from_anywhere(tmp_path: Path) -> None:
    done = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--help"], capture_output=True, text=True, cwd=tmp_path,
                          env={"OUT": str(tmp_path / "out"), "PATH": "/usr/bin:/bin"}, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "--dry-run" in done.stdout and "diffusers" in done.stdout


@requires_peers
def test_a_passed_deadline_skips_what_is_left_and_says_so(tmp_path: Path) -> None:
    done, report = _run(tmp_path / "out", "--families", "sd1,flux", "--deadline", "0")
    assert {name: family["status"] for name, family in report["families"].items()} == {"sd1": "skipped", "flux": "skipped"}
    assert all(family["runs"] == [] for family in report["families"].values())
    assert report["skipped"] == ["sd1: not built, the deadline (0 s) had passed",
                                 "flux: not built, the deadline (0 s) had passed"]
    assert "skipped: flux: not built" in done.stdout


def test_steady_state_leaves_out_the_warm_up_steps() -> None:
    bench = _bench()
    stamps = [10.0, 15.0, 16.0, 17.5, 18.5, 19.5]  # steps 1-6; the interval before step 2 is slow
    median, mean = bench.steady_state(stamps, warmup=2)
    assert median == pytest.approx(1.0) and mean == pytest.approx((19.5 - 15.0) / 4)
    assert bench.steady_state(stamps, warmup=1)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="1 optimizer step"):
        bench.steady_state([3.0], warmup=1)


def test_both_sides_get_the_same_settings_on_the_gpu(tmp_path: Path) -> None:
    bench = _bench()
    specs = bench.families(False, bench.parse_args([]))
    expected = {"sd1": (512, 4, 16), "sdxl": (1024, 1, 16), "flux": (1024, 1, 16)}
    for name, spec in specs.items():
        assert (spec.resolution, spec.batch, spec.rank) == expected[name] and spec.steps > spec.warmup >= 1
        peer = _peer_args(bench.peer_command(spec, PEERS / spec.script, tmp_path / "m", tmp_path / "i", tmp_path / "o", "bf16"))
        ours = tomllib.loads(bench.ours_config(spec, "bench-m", tmp_path / "i", "bf16"))["finetune"]
        assert peer["pretrained_model_name_or_path"] == str(tmp_path / "m")
        assert peer["instance_data_dir"] == ours["instance-dir"] == str(tmp_path / "i")
        assert peer["instance_prompt"] == ours["instance-prompt"]
        assert (int(peer["resolution"]), int(peer["train_batch_size"]), int(peer["rank"]), int(peer["max_train_steps"]),
                int(peer["seed"])) == (ours["resolution"], ours["batch-size"], ours["rank"], ours["steps"], ours["seed"])
        assert float(peer["learning_rate"]) == ours["lr"] and peer["lr_scheduler"] == ours["lr_schedule"] == "constant"
        assert peer["mixed_precision"] == ours["mixed_precision"] == "bf16"
        assert float(peer["adam_weight_decay"]) == ours["weight_decay"]
        assert float(peer["max_grad_norm"]) == ours["max_grad_norm"]
        assert ours["optimizer"] == "adamw" and ours["flip"] is False and ours["samples"] is False
    flux = _peer_args(bench.peer_command(specs["flux"], PEERS / "x.py", tmp_path, tmp_path, tmp_path, "bf16"))
    assert (flux["max_sequence_length"], flux["guidance_scale"]) == ("128", "1.0")  # what ours trains with
    assert flux["lora_layers"] == "to_k,to_q,to_v,to_out.0"
    with_defaults = bench.families(False, bench.parse_args(["--peer-default-layers"]))["flux"]
    assert "--lora_layers" not in bench.peer_command(with_defaults, PEERS / "x.py", tmp_path, tmp_path, tmp_path, "bf16")


@pytest.mark.slow
def test_the_full_size_models_fit_together() -> None:
    import torch

    bench = _bench()
    with torch.device("meta"):
        sd, _ = bench.build_sd15()
        xl, xl_described = bench.build_sdxl((1, 2, 4), 2)
        flux, flux_described = bench.build_flux(2, 4, 2)
        assert sum(p.numel() for p in sd.unet.parameters()) == 859_520_964  # SD1.5's UNet
        tokens = torch.zeros(1, 77, dtype=torch.long)
        text = sd.text_encoder(tokens)[0]
        assert sd.unet(torch.empty(4, 4, 64, 64), torch.ones(4), encoder_hidden_states=text.expand(4, -1, -1)).sample.shape == (4, 4, 64, 64)
        assert sd.vae.encode(torch.empty(1, 3, 512, 512)).latent_dist.mean.shape == (1, 4, 64, 64)
        states = torch.cat([xl.text_encoder(tokens, output_hidden_states=True).hidden_states[-2],
                            xl.text_encoder_2(tokens, output_hidden_states=True).hidden_states[-2]], dim=-1)
        pooled = xl.text_encoder_2(tokens)[0]
        out = xl.unet(torch.empty(1, 4, 128, 128), torch.ones(1), encoder_hidden_states=states,
                      added_cond_kwargs={"text_embeds": pooled, "time_ids": torch.zeros(1, 6)}).sample
        assert out.shape == (1, 4, 128, 128)
        t5 = flux.text_encoder_2(torch.zeros(1, 128, dtype=torch.long))[0]
        latents = flux.vae.encode(torch.empty(1, 3, 1024, 1024)).latent_dist.mean
        assert latents.shape == (1, 16, 128, 128)
        packed = flux.transformer(hidden_states=torch.empty(1, 64 * 64, 64), encoder_hidden_states=t5,
                                  pooled_projections=flux.text_encoder(tokens).pooler_output, timestep=torch.ones(1),
                                  img_ids=torch.zeros(64 * 64, 3), txt_ids=torch.zeros(128, 3), guidance=torch.ones(1)).sample
        assert packed.shape == (1, 4096, 64)
    assert flux.transformer.config.num_attention_heads * flux.transformer.config.attention_head_dim == 3072
    assert "2 double + 4 single blocks" in flux_described["transformer"]
    assert "(1, 2, 4)" in xl_described["unet"]
