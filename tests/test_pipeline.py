"""The pipeline (both arms on RSSCN7, caching), the domain-gap report and the HTML report."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from cspt.errors import CsptError
from cspt.metrics import frechet_distance, mmd
from cspt.pipeline import STAGE_FILE, plan, read_pipeline, stage_key
from cspt.tasks.gap import domain_gap
from cspt.weights.load import load_checkpoint
from tests.conftest import PLAIN_FINETUNE, TINY_IMAGENET, needs, run_cli


def test_distances_grow_with_the_shift():
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 8, generator=generator), torch.randn(400, 8, generator=generator)
    shifted = b + 1.5
    assert frechet_distance(a, b) < 0.2 and frechet_distance(a, shifted) == pytest.approx(8 * 1.5**2, rel=0.15)
    assert mmd(a, b) < mmd(a, shifted)


def test_gap_is_larger_on_aerial_images_than_on_held_out_natural_ones(natural_mae, rsscn7):
    result = domain_gap(natural_mae, [needs(TINY_IMAGENET)], [rsscn7], max_images=96, device="cpu")
    assert result["images"] == {"reference": 96, "source": 96, "target": 96}
    for measure in ("reconstruction_loss", "frechet_distance", "mmd"):
        values = result[measure]
        print(f"{measure}: held-out source {values['source']:.4f}, RSSCN7 {values['target']:.4f}")
        assert values["target"] > values["source"], measure
    assert len(result["band_statistics"]["target"]["mean"]) == 3


@pytest.mark.slow
def test_pipeline_runs_both_arms_then_skips_finished_stages(natural_mae, rsscn7_csv, rsscn7_list, tmp_path):
    spec = {
        "output": str(tmp_path / "pipe"),
        "source": str(natural_mae),
        "arms": ["direct", "cspt"],
        "pretrain": {"data": [str(rsscn7_list(48))], "epochs": 1, "batch_size": 16, "warmup_epochs": 0,
                     "num_workers": 0, "device": "cpu", "vis_every": 1},
        "finetune": {"rsscn7": {"task": "classify", "data": str(rsscn7_csv(6)), "train_fraction": 0.5,
                                "epochs": 1, "batch_size": 8, "img_size": 32, "num_workers": 0, "device": "cpu",
                                **PLAIN_FINETUNE, "rand_augment": "none"}},
        "gap": {"source": [str(needs(TINY_IMAGENET))], "target": [str(rsscn7_list(24, seed=1))], "max_images": 16},
    }
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(spec))
    first = run_cli("--debug", "pipeline", str(config))
    assert first.returncode == 0, first.stderr[-3000:]
    pipe = tmp_path / "pipe"
    for stage in ("pretrain", "direct/rsscn7", "cspt/rsscn7", "gap"):
        assert json.loads((pipe / stage / "stage.json").read_text())["done"], stage
    cspt_lineage = json.loads((pipe / "cspt" / "rsscn7" / "classifier.json").read_text())["lineage"]
    assert [s["stage"] for s in cspt_lineage] == ["source", "consecutive MAE pretraining",
                                                  "fine-tuning (scene classification)"]
    report = (pipe / "report.md").read_text()
    assert "| direct/rsscn7 | classify | direct | OA " in report and "| cspt/rsscn7 | classify | cspt | OA " in report
    assert "Domain gap" in report and "Fréchet distance: source" in report
    direct_oa = json.loads((pipe / "direct" / "rsscn7" / "metrics.json").read_text())["oa"]
    cspt_oa = json.loads((pipe / "cspt" / "rsscn7" / "metrics.json").read_text())["oa"]
    assert "## rsscn7: direct against cspt" in report
    assert f"OA: direct {direct_oa:.4f}, cspt {cspt_oa:.4f}, difference {cspt_oa - direct_oa:+.4f}: the arms " \
           "cannot be told apart from one run each: no seed-to-seed spread is recorded" in report
    assert (pipe / "cspt" / "rsscn7" / "report.html").is_file()  # every run gets its own report too

    metrics = (pipe / "direct" / "rsscn7" / "metrics.json").stat().st_mtime_ns
    second = run_cli("pipeline", str(config))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("skipped") == 4 and "running" not in second.stderr
    assert (pipe / "direct" / "rsscn7" / "metrics.json").stat().st_mtime_ns == metrics

    only = run_cli("pipeline", str(config), "--only", "direct/rsscn7")
    assert only.returncode == 0 and "stage direct/rsscn7: running" in only.stderr
    assert "stage cspt/rsscn7: running" not in only.stderr

    check_html(pipe / "report.html", tmp_path)


def check_html(path: Path, tmp_path: Path) -> None:
    """Every image is linked relative to the page (no run embedded: the report stays small) and decodes; in
    headless Chromium when it is installed."""
    text = path.read_text()
    sources = re.findall(r"<img src='([^']*)'", text)
    assert len(sources) >= 4 and not any(s.startswith(("data:", "/")) for s in sources)
    for source in sources:
        Image.open(path.parent / source).verify()
    assert path.stat().st_size < 100_000
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        return
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and dom.stdout.count("<img") == len(sources)


@pytest.mark.slow
def test_the_guided_arms_pretrain_each_with_their_own_options_and_fine_tune_from_their_own_encoder(
        natural_mae, rsscn7_csv, rsscn7_list, tmp_path):
    replay = [str(needs(TINY_IMAGENET))]
    spec = {
        "output": str(tmp_path / "pipe"), "source": str(natural_mae),
        "arms": ["cspt_teacher", "fresh_teacher", "cspt_replay"],
        "pretrain": {"data": [str(rsscn7_list(24))], "epochs": 1, "batch_size": 12, "warmup_epochs": 0,
                     "num_workers": 0, "device": "cpu", "vis_every": 0, "log_every": 1},
        "replay": {"data": replay, "fraction": 0.4},
        "finetune": {"rsscn7": {"task": "classify", "data": str(rsscn7_csv(3)), "train_fraction": 0.5,
                                "epochs": 1, "batch_size": 6, "img_size": 32, "num_workers": 0, "device": "cpu",
                                **PLAIN_FINETUNE, "rand_augment": "none"}},
    }
    stages = {stage.name: stage for stage in plan(spec)}
    assert [n for n in stages if n.startswith("pretrain")] == ["pretrain_cspt_teacher", "pretrain_fresh_teacher",
                                                               "pretrain_cspt_replay"]
    assert stages["pretrain_cspt_teacher"].options["distill_from"] == str(natural_mae)
    assert stages["pretrain_cspt_teacher"].init_from == "source" and stages["pretrain_fresh_teacher"].init_from is None
    assert stages["pretrain_cspt_replay"].options["replay"] == replay and "distill_from" not in \
        stages["pretrain_cspt_replay"].options
    assert stages["fresh_teacher/rsscn7"].init_from == "pretrain_fresh_teacher"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(spec))
    result = run_cli("pipeline", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    pipe = tmp_path / "pipe"
    for arm in ("cspt_teacher", "fresh_teacher"):
        logged = [json.loads(line) for line in (pipe / f"pretrain_{arm}" / "log.jsonl").read_text().splitlines()]
        assert all("loss_distill" in r for r in logged if "loss" in r)
        lineage = json.loads((pipe / f"pretrain_{arm}" / "encoder.json").read_text())["lineage"]
        assert lineage[-1]["teacher"]["path"] == str(natural_mae)
        assert (lineage[0]["stage"] == "source") == (arm == "cspt_teacher")  # the fresh student has no source
    assert "replay: " in result.stderr and "source images" in result.stderr
    classifier = json.loads((pipe / "cspt_replay" / "rsscn7" / "classifier.json").read_text())
    assert classifier["lineage"][-2]["config"]["replay"] == replay
    with pytest.raises(CsptError, match="teacher arms need a 'source:'"):
        read_pipeline_text(tmp_path, {**spec, "source": None})


@pytest.mark.slow
def test_seeds_and_budgets_make_one_chain_each_with_probes_and_a_report_averaged_over_seeds(
        natural_mae, rsscn7_csv, rsscn7_list, tmp_path):
    train, test = rsscn7_csv(2), rsscn7_csv(2, seed=1)
    spec = {
        "output": str(tmp_path / "pipe"), "source": str(natural_mae), "arms": ["random", "direct", "scratch"],
        "seeds": [3, 4], "budgets": [1, 2],
        "pretrain": {"data": [str(rsscn7_list(12))], "epochs": 7, "batch_size": 12, "warmup_epochs": 0,
                     "num_workers": 0, "device": "cpu", "vis_every": 0},
        "finetune": {"rs": {"task": "classify", "train": str(train), "test": str(test), "epochs": 1,
                            "batch_size": 7, "img_size": 32, "num_workers": 0, "device": "cpu", **PLAIN_FINETUNE,
                            "rand_augment": "none"}},
        "probes": {"knn": {"probe": "knn", "train": str(train), "test": str(test), "img_size": 32, "k": 3,
                           "num_workers": 0}},
    }
    stages = {stage.name: stage for stage in plan(spec)}
    pretraining = [name for name, stage in stages.items() if stage.kind == "pretrain"]
    assert pretraining == ["pretrain_scratch_e1_s3", "pretrain_scratch_e2_s3", "pretrain_scratch_e1_s4",
                           "pretrain_scratch_e2_s4"]
    for name in pretraining:  # the budget and seed of the chain, the source's model, the rest from 'pretrain:'
        epochs, seed = int(name.split("_e")[1][0]), int(name[-1])
        assert stages[name].options == {"shape_from": str(natural_mae), **spec["pretrain"], "epochs": epochs,
                                        "seed": seed}
        assert stages[name].init_from is None  # scratch: random initialisation
    assert stages["random_s3/rs"].init_from is None and stages["direct_s4/rs"].init_from == "source"
    assert stages["scratch_e2_s4/rs"].init_from == "pretrain_scratch_e2_s4"
    assert stages["scratch_e2_s4/rs"].options["seed"] == 4 and stages["direct_s4/knn"].options["seed"] == 4
    probes = sorted(name for name, stage in stages.items() if stage.kind == "probe")
    assert probes == ["direct_s3/knn", "direct_s4/knn", "scratch_e1_s3/knn", "scratch_e1_s4/knn",
                      "scratch_e2_s3/knn", "scratch_e2_s4/knn"]  # the random arm has no encoder before fine-tuning

    spec["arms"], spec["budgets"] = ["direct", "scratch"], [1]  # what runs: 2 seeds of 2 arms
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(spec))
    result = run_cli("pipeline", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    pipe = tmp_path / "pipe"
    for seed in (3, 4):
        state = json.loads((pipe / f"pretrain_scratch_e1_s{seed}" / STAGE_FILE).read_text())
        assert state["done"] and state["seconds"] > 0
        pretrained = yaml.safe_load((pipe / f"pretrain_scratch_e1_s{seed}" / "config.yaml").read_text())
        assert (pretrained["epochs"], pretrained["seed"]) == (1, seed)
        source = load_checkpoint(natural_mae)  # scratch: the source's model (not ViT-B/16), its own weights
        scratch = load_checkpoint(pipe / f"pretrain_scratch_e1_s{seed}" / "encoder.safetensors")
        assert scratch.arch["embed_dim"] == source.arch["embed_dim"] and scratch.arch["depth"] == source.arch["depth"]
        qkv = "blocks.0.attn.qkv.weight"
        assert not torch.allclose(scratch.state_dict[qkv].float(), source.state_dict[qkv].float())
        assert yaml.safe_load((pipe / f"scratch_e1_s{seed}" / "rs" / "config.yaml").read_text())["seed"] == seed
    scores = {(arm, task): [json.loads((pipe / f"{arm}_s{seed}" / task / "metrics.json").read_text())["oa"]
                            for seed in (3, 4)]
              for arm in ("direct", "scratch_e1") for task in ("rs", "knn")}
    report = (pipe / "report.md").read_text()
    for task, label in (("rs", "OA"), ("knn", "probe OA")):
        direct, scratch = scores[("direct", task)], scores[("scratch_e1", task)]
        change = statistics.mean(scratch) - statistics.mean(direct)
        assert f"## {task}: direct against scratch_e1" in report
        paired = [b - a for a, b in zip(direct, scratch)]
        half = 12.706 * statistics.stdev(paired) / 2**0.5  # Student's t, one degree of freedom
        said = (f"pretraining as scratch {'helped' if change > 0 else 'hurt'} (95% interval" if abs(change) > half
                else "the arms cannot be told apart (95% interval")
        assert (f"{label}: direct {statistics.mean(direct):.4f} ± {statistics.stdev(direct):.4f}, scratch_e1 "
                f"{statistics.mean(scratch):.4f} ± {statistics.stdev(scratch):.4f}, difference {change:+.4f}: "
                f"{said} of the paired difference over 2 seeds: {change - half:+.4f} to {change + half:+.4f}") in report
    with pytest.raises(CsptError, match="'seeds' must be a list of whole numbers"):
        read_pipeline_text(tmp_path, {**spec, "seeds": 3})
    with pytest.raises(CsptError, match="probe 'knn' needs probe: knn | linear"):
        read_pipeline_text(tmp_path, {**spec, "probes": {"knn": {"probe": "svm"}}})


def read_pipeline_text(folder: Path, spec: dict) -> dict:
    path = folder / "check.yaml"
    path.write_text(yaml.safe_dump(spec))
    return read_pipeline(path)


def test_demo_trains_on_no_held_out_scene_and_its_stage_2_is_a_real_stage(tmp_path, monkeypatch):
    """Both arms; what pretraining and detection training read, as cspt's own readers find it (the held-out
    scenes only score stage 2's MAE loss); and the step budget and learning rate stage 2 really gets, from the
    data loader and the trainer's own schedule: the reproduction's recipe, never a no-op."""
    from cspt.config import PretrainConfig, make_config
    from cspt.data.detection import read_annotations
    from cspt.data.files import find_images
    from cspt.demo import HELD_OUT, demo_spec
    from cspt.engine.distributed import DistContext
    from cspt.engine.sampler import SeededBatchSampler
    from cspt.engine.trainer import Trainer
    from cspt.pipeline import plan
    from cspt.tasks.pretrain import PretrainTask, resolve_config
    from tests.conftest import DEEPFOREST_WHEEL, ROOT

    needs(DEEPFOREST_WHEEL)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("CSPT_CACHE", str(tmp_path / "cache"))
    spec = demo_spec(str(tmp_path / "demo"), "cspt:mae-tiny-tinyimagenet")
    assert [s.name for s in plan(spec)] == ["pretrain", "direct/neon_trees", "cspt/neon_trees"]
    # one run's verdict is judged by the spread the benchmark measured, on the metric the report leads with
    from cspt.report import HEADLINE

    evidence = spec["evidence"]["neon_trees"]
    assert evidence["metric"] == HEADLINE["detect"][0][1] and 0 < evidence["spread"] < 1
    assert "benchmarks/demo_spread.py" in evidence["measured_by"]
    held_out = {f"{stem}.png" for stem in HELD_OUT}
    pretrained_on = {p.name for p in find_images(spec["pretrain"]["data"])}
    assert len(pretrained_on) == 3 and not pretrained_on & held_out
    assert {p.name for p in find_images(spec["pretrain"]["eval_data"])} == held_out  # scored, never trained on
    detect = spec["finetune"]["neon_trees"]
    train = read_annotations(detect["train"], detect["images"], classes=["Tree"])
    assert not {s.image.name for s in train.scenes} & held_out and train.count_boxes() == 279 + 574
    val = read_annotations(detect["val"], detect["images"], classes=["Tree"])
    assert {s.image.name for s in val.scenes} == held_out and val.count_boxes() == 61 + 37

    config = make_config(PretrainConfig, {**spec["pretrain"], "init": spec["source"], "output": str(tmp_path / "p")},
                         "demo")
    config = resolve_config(config)
    dataset, _ = PretrainTask(config).train_data()
    sampler = SeededBatchSampler(len(dataset), config.batch_size, config.seed)
    cpu = DistContext(0, 1, 0, torch.device("cpu"))
    schedule = Trainer(config, tmp_path / "p", cpu).schedule(len(sampler))
    assert schedule.total_steps >= 912, schedule  # the reproduction's 24 epochs x 38 steps of 32 crops
    peak = max(schedule.lr(step) for step in range(schedule.total_steps))
    assert peak >= 1.5e-3 * 32 / 256 * 0.99, peak  # its blr 1.5e-3, ten times the ViT-B recipe's
    assert schedule.warmup_steps <= schedule.total_steps // 10
    assert config.tile_size == detect["tile_size"]  # stage 2 crops the detector's tiles: the scale it adapts at


def test_the_demo_source_travels_with_the_package_and_random_needs_asking(tmp_path, monkeypatch):
    """From a directory with no ../shared: the packaged natural MAE, never random initialisation unless asked;
    without the packaged file, one line naming the ways out."""
    import cspt.demo
    from cspt.demo import demo_source
    from cspt.errors import CsptError
    from cspt.tasks.common import recorded_contract
    from cspt.weights.packaged import PACKAGED

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSPT_SOURCE_CHECKPOINT", raising=False)
    monkeypatch.setenv("CSPT_SHARED", str(tmp_path / "nowhere"))
    source = demo_source(None)
    assert source == PACKAGED["name"]
    packaged = load_checkpoint(source)
    assert packaged.arch["patch_size"] == 8 and packaged.arch["depth"] == 8 and packaged.has_decoder
    assert recorded_contract(packaged).mean == (0.485, 0.456, 0.406)  # ImageNet statistics, as it was trained
    assert "Tiny-ImageNet" in packaged.described["terms"] and packaged.described["lineage"][0]["sha256"]
    assert demo_source("random") is None and demo_source("other.pth") == "other.pth"
    monkeypatch.setenv("CSPT_SOURCE_CHECKPOINT", "mine.pth")
    assert demo_source(None) == "mine.pth"
    monkeypatch.delenv("CSPT_SOURCE_CHECKPOINT")
    monkeypatch.setattr(cspt.demo, "packaged_path", lambda name: tmp_path / "gone.safetensors")
    with pytest.raises(CsptError, match=r"no natural-image source: .*--init CHECKPOINT.*CSPT_SOURCE_CHECKPOINT.*"
                                        r"--init random"):
        demo_source(None)


def test_the_packaged_source_is_the_shared_checkpoint_in_half_precision(natural_mae):
    """Same architecture and keys as ../shared/weights; weights equal to fp16 rounding; the fixed position
    embeddings kept exact, so that they are still recomputed (not resampled) for other input sizes."""
    import torch

    from cspt.weights.export import sha256_of

    original, packaged = load_checkpoint(natural_mae), load_checkpoint("cspt:mae-tiny-tinyimagenet")
    assert packaged.arch == original.arch and set(packaged.state_dict) == set(original.state_dict)
    for key, value in original.state_dict.items():
        assert torch.allclose(packaged.state_dict[key].float(), value, atol=1e-3, rtol=1e-3), key
    assert torch.equal(packaged.state_dict["pos_embed"], original.state_dict["pos_embed"])
    assert packaged.described["lineage"][0]["sha256"] == sha256_of(natural_mae)


def test_the_demo_recipes_take_their_shape_from_a_source_of_another_architecture(tmp_path):
    """A ViT-B/16 source (e.g. --init hf:facebook/vit-mae-base) keeps its own width, depth, heads and
    decoder; the inputs stay as many patches wide as the tiny ViT's."""
    import dataclasses

    import torch

    from cspt.config import DetectConfig, PretrainConfig, make_config
    from cspt.demo import recipe, shaped_like
    from cspt.models import MaskedAutoencoderViT
    from cspt.tasks.common import resolved_encoder_fields
    from tests.conftest import TINY_ARCH

    source = tmp_path / "p16.pth"
    arch = dataclasses.replace(TINY_ARCH, patch_size=16, img_size=64, decoder_dim=48)
    torch.save({"model": MaskedAutoencoderViT(arch).state_dict()}, source)
    assert shaped_like(recipe("pretrain_tiny_cpu.yaml"), None, 8) == recipe("pretrain_tiny_cpu.yaml")
    for name, cls, grid, size_key in (("pretrain_tiny_cpu.yaml", PretrainConfig, 8, "img_size"),
                                      ("detect_tiny_cpu.yaml", DetectConfig, 16, "tile_size")):
        options = shaped_like(recipe(name), load_checkpoint(source).arch["patch_size"], grid)
        assert options[size_key] == grid * 16
        config = make_config(cls, {**options, "img_size": options.get("img_size", options.get("tile_size"))}, name)
        fields = resolved_encoder_fields(config, load_checkpoint(source))
        assert (fields["embed_dim"], fields["depth"], fields["patch_size"]) == (64, 2, 16)
        if cls is PretrainConfig:
            assert (fields["decoder_dim"], fields["decoder_depth"]) == (48, 1)


def test_arms_from_random_initialisation_build_the_sources_model_with_random_weights(natural_mae, tmp_path):
    """Without a shape in the spec, the random and scratch arms used to build the default ViT-B/16 beside a tiny
    source: a comparison of architectures, not of initialisations. Now they take ``shape_from: SOURCE`` (the
    source's shape, bands and pixel contract, random weights; tests/test_band_groups.py checks what it builds),
    and a source replaced at the same path makes them new stages."""
    spec = {"output": str(tmp_path / "pipe"), "source": str(natural_mae),
            "arms": ["direct", "random", "cspt", "scratch", "fresh_teacher"], "pretrain": {"data": ["pool"]},
            "finetune": {"trees": {"task": "detect", "train": "t.csv"}}}
    options = {stage.name: stage.options for stage in plan(spec)}
    assert options["random/trees"]["shape_from"] == options["pretrain_scratch"]["shape_from"] == str(natural_mae)
    for name in ("direct/trees", "pretrain", "pretrain_fresh_teacher", "scratch/trees"):  # these load weights
        assert "shape_from" not in options[name], name  # (fresh_teacher: its teacher's model, tasks/pretrain.py)
    assert "shape_from" not in next(s for s in plan({**spec, "source": None}) if s.name == "random/trees").options
    copy = tmp_path / "source.pth"
    shutil.copyfile(natural_mae, copy)
    random_trees = next(s for s in plan({**spec, "source": str(copy)}) if s.name == "random/trees")
    before = stage_key(random_trees, "random")
    os.utime(copy, ns=(1, 1))  # replaced at the same path
    assert stage_key(random_trees, "random") != before


def test_report_and_palette_refuse_what_they_cannot_read(tmp_path):
    from cspt.errors import CsptError
    from cspt.report import write_run_report
    from cspt.tasks.segment import load_palette

    with pytest.raises(CsptError, match="not a cspt run directory"):
        write_run_report(tmp_path)
    unknown = r"nowhere.yaml: no such palette file or built-in palette \(dubai, gid, isprs\)"
    with pytest.raises(CsptError, match=unknown):
        load_palette("nowhere.yaml", None)


def test_the_verdict_is_only_as_strong_as_the_evidence():
    from cspt.report import verdict

    evidence = {"metric": "mAP@0.5", "spread": 0.05, "measured_by": "benchmarks/demo_spread.py (4 seeds)"}
    assert verdict("CSPT", [0.03], evidence).startswith("the arms cannot be told apart at this budget")
    assert "benchmarks/demo_spread.py" in verdict("CSPT", [0.03], evidence)
    assert verdict("CSPT", [0.08], evidence).startswith("CSPT helped, beyond the ±0.0500")
    assert verdict("CSPT", [-0.08], evidence).startswith("CSPT hurt")
    assert "no seed-to-seed spread is recorded" in verdict("CSPT", [0.2], None)  # one run, nothing to judge by
    # several seeds: the pipeline's own paired interval decides
    assert verdict("CSPT", [0.05, 0.06, 0.04, 0.05], None).startswith("CSPT helped (95% interval")
    assert verdict("CSPT", [0.05, -0.06, 0.04, -0.03], None).startswith("the arms cannot be told apart (95%")
