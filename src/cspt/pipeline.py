"""``cspt pipeline CONFIG.yaml``: source checkpoint -> consecutive pretraining -> fine-tunes -> report.

A pipeline config names its stages::

    output: runs/pipeline
    source: mae_pretrain_vit_base_full.pth   # null: random initialisation
    arms: [direct, cspt]                     # direct: source -> fine-tune; cspt: source -> pretrain -> fine-tune
    pretrain: {data: [/data/target], epochs: 100, ...}        # PretrainConfig options
    replay: {data: [/data/imagenet_val], fraction: 0.25}      # for the cspt_replay arm
    finetune:
      aid: {task: classify, data: /data/AID, train_fraction: 0.2, ...}   # the task's options
    gap: {source: [/data/imagenet_val], target: [/data/AID], max_images: 256}   # optional

Arms that pretrain (every arm but ``direct``) each have their own pretraining stage,
the ``pretrain`` options plus the arm's own: ``cspt`` (from the source), ``cspt_teacher``
(from the source, guided by it as a frozen teacher: ``--distill-from``), ``fresh_teacher``
(a randomly initialised student guided by the source, GFM's setting) and ``cspt_replay``
(from the source, with ``replay`` images mixed into every batch).

Each stage runs in its own directory under ``output`` (``pretrain/`` for the cspt arm,
``pretrain_ARM/`` for the others, ``ARM/NAME/``, ``gap/``). A finished stage is skipped
when its key (a hash of its options and of its input's key) is unchanged; an interrupted
one resumes from its checkpoint; a changed one starts again. ``--from STAGE`` re-runs
that stage and every later one, ``--only STAGE`` that stage alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cspt.checkpoints import checkpoint_file
from cspt.config import ClassifyConfig, DetectConfig, PretrainConfig, SegmentConfig, make_config, read_yaml
from cspt.errors import CsptError
from cspt.hub import is_hub_name

log = logging.getLogger("cspt")

ARMS = ("direct", "cspt", "cspt_teacher", "fresh_teacher", "cspt_replay")
#: the arms with a pretraining stage; those guided by the source as a frozen teacher; the one whose student
#: starts from random weights instead of the source
PRETRAINING_ARMS = ("cspt", "cspt_teacher", "fresh_teacher", "cspt_replay")
TEACHER_ARMS = ("cspt_teacher", "fresh_teacher")
FRESH_STUDENT_ARM = "fresh_teacher"
TASKS = {"classify": ClassifyConfig, "detect": DetectConfig, "segment": SegmentConfig}
STAGE_FILE = "stage.json"
PIPELINE_KEYS = {"output", "source", "arms", "pretrain", "replay", "finetune", "gap"}


@dataclass
class Stage:
    """One step of the chain and where it runs."""

    name: str  #: "pretrain", "gap", or "ARM/NAME"
    kind: str  #: pretrain, gap, classify, detect or segment
    options: dict[str, Any]
    run_dir: Path
    init_from: str | None = None  #: "source" or the name of the stage whose output it starts from
    arm: str | None = None
    key: str = ""
    ran: bool = field(default=False)


def read_pipeline(path: str | Path) -> dict[str, Any]:
    spec = read_yaml(path)
    unknown = sorted(set(spec) - PIPELINE_KEYS)
    if unknown:
        raise CsptError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(PIPELINE_KEYS))})")
    if not spec.get("output"):
        raise CsptError(f"{path}: needs 'output:' (the pipeline's folder)")
    arms = spec.setdefault("arms", ["cspt"])
    bad = sorted(set(arms) - set(ARMS))
    if bad or not arms:
        raise CsptError(f"{path}: arms must be among {', '.join(ARMS)}, got {arms}")
    pretraining = [arm for arm in arms if arm in PRETRAINING_ARMS]
    if pretraining and not spec.get("pretrain"):
        raise CsptError(f"{path}: the {pretraining[0]} arm needs a 'pretrain:' section")
    if any(arm in TEACHER_ARMS for arm in arms) and not spec.get("source"):
        raise CsptError(f"{path}: the teacher arms need a 'source:' checkpoint (the teacher)")
    if "cspt_replay" in arms and not (spec.get("replay") or {}).get("data"):
        raise CsptError(f"{path}: the cspt_replay arm needs 'replay: {{data: [...], fraction: F}}'")
    for name, options in (spec.get("finetune") or {}).items():
        if not isinstance(options, dict) or options.get("task") not in TASKS:
            raise CsptError(f"{path}: finetune '{name}' needs task: {' | '.join(TASKS)}")
    return spec


def plan(spec: dict[str, Any]) -> list[Stage]:
    """The stages of a pipeline spec, in the order they run."""
    output = Path(spec["output"])
    stages = []
    for arm in spec["arms"]:
        if arm in PRETRAINING_ARMS:
            name = pretraining_stage(arm)
            stages.append(Stage(name, "pretrain", arm_pretraining(spec, arm), output / name,
                                None if arm == FRESH_STUDENT_ARM else "source", arm))
    for arm in spec["arms"]:
        for name, options in (spec.get("finetune") or {}).items():
            options = dict(options)
            kind = options.pop("task")
            stages.append(Stage(f"{arm}/{name}", kind, options, output / arm / name,
                                "source" if arm == "direct" else pretraining_stage(arm), arm))
    if spec.get("gap"):  # measured for the source, and after pretraining when that stage exists
        after = "pretrain" if "cspt" in spec["arms"] else "source"
        stages.append(Stage("gap", "gap", dict(spec["gap"]), output / "gap", after))
    return stages


def pretraining_stage(arm: str) -> str:
    """The name (and folder) of an arm's pretraining stage."""
    return "pretrain" if arm == "cspt" else f"pretrain_{arm}"


def arm_pretraining(spec: dict[str, Any], arm: str) -> dict[str, Any]:
    """The ``pretrain`` options with the arm's own (the teacher is the source; replay its images)."""
    options = dict(spec["pretrain"])
    if arm in TEACHER_ARMS:
        options["distill_from"] = spec["source"]
    if arm == "cspt_replay":
        replay = spec["replay"]
        options["replay"] = list(replay["data"])
        options["replay_fraction"] = replay.get("fraction", PretrainConfig.replay_fraction)
    return options


def file_identity(path: str | None) -> str:
    """A cheap identity of an input checkpoint: resolved path, size and modification time."""
    if not path:
        return "random"
    target = checkpoint_file(Path(path)) if is_hub_name(path) else Path(path)
    if not target.exists():
        raise CsptError(f"{target}: source checkpoint not found")
    stat = target.stat()
    return f"{target.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def stage_key(stage: Stage, input_key: str) -> str:
    text = json.dumps({"kind": stage.kind, "options": stage.options, "input": input_key}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_state(stage: Stage) -> dict[str, Any]:
    path = stage.run_dir / STAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_output(stage: Stage) -> str:
    """What a later stage starts from: a pretraining run's exported encoder."""
    return str(stage.run_dir / "encoder.safetensors")


def run_stage(stage: Stage, init: str | None) -> None:
    """Run one stage (resuming it when its directory holds a run of the same settings)."""
    from cspt.tasks.classify import finetune_classify
    from cspt.tasks.detect import finetune_detect
    from cspt.tasks.pretrain import pretrain
    from cspt.tasks.segment import finetune_segment

    if stage.kind == "gap":
        run_gap_stage(stage, init)
        return
    runners: dict[str, tuple[type, Callable]] = {"pretrain": (PretrainConfig, pretrain),
                                                  "classify": (ClassifyConfig, finetune_classify),
                                                  "detect": (DetectConfig, finetune_detect),
                                                  "segment": (SegmentConfig, finetune_segment)}
    cls, runner = runners[stage.kind]
    values = {**stage.options, "output": str(stage.run_dir), "init": init}
    runner(make_config(cls, values, f"pipeline stage {stage.name}"))


def run_gap_stage(stage: Stage, source: str | None) -> None:
    """The domain gap of the source checkpoint and, when there is one, of the pretrained encoder."""
    from cspt.gap import domain_gap, gap_closed, write_gap

    options = dict(stage.options)
    if not source:
        raise CsptError("the gap stage needs a source checkpoint")
    before = domain_gap(source, options["source"], options["target"], options.get("max_images", 256))
    write_gap(before, stage.run_dir / "source")
    pretrained = stage.run_dir.parent / "pretrain" / "checkpoints" / "last.pt"
    if pretrained.is_file():
        after = domain_gap(pretrained, options["source"], options["target"], options.get("max_images", 256))
        write_gap(after, stage.run_dir / "pretrained")
        closed = gap_closed(before, after)
        summary = {"frechet_distance_gap_closed_percent": closed}
        (stage.run_dir / "gap_closed.json").write_text(json.dumps(summary, indent=2) + "\n")
        if closed is not None:
            log.info("consecutive pretraining closed %.1f%% of the feature-distance gap", closed)


def run_pipeline(path: str | Path, start: str | None = None, only: str | None = None) -> Path:
    """Run the stages of the pipeline at ``path`` that are not done; write the report; return its path."""
    from cspt.report import write_pipeline_report

    spec = read_pipeline(path)
    stages = plan(spec)
    names = [s.name for s in stages]
    for flag, value in (("--from", start), ("--only", only)):
        if value is not None and value not in names:
            raise CsptError(f"{flag} {value}: no such stage (stages: {', '.join(names)})")
    source = spec.get("source")
    if source is None:
        log.info("source: none given, so every chain starts from random initialisation")
    keys = {"source": file_identity(source), None: "random"}
    forced = names[names.index(start):] if start else ([only] if only else [])
    for stage in stages:
        stage.key = stage_key(stage, keys[stage.init_from])
        keys[stage.name] = stage.key
        if only and stage.name != only:
            continue
        state = stage_state(stage)
        if state.get("done") and state.get("key") == stage.key and stage.name not in forced:
            log.info("stage %s: done (key %s), skipped", stage.name, stage.key)
            continue
        if stage.run_dir.exists() and (state.get("key") != stage.key or stage.name in forced):
            shutil.rmtree(stage.run_dir)  # other settings or inputs, or asked for: start it again
        stage.run_dir.mkdir(parents=True, exist_ok=True)
        (stage.run_dir / STAGE_FILE).write_text(json.dumps({"key": stage.key, "done": False}) + "\n")
        upstream = next((s for s in stages if s.name == stage.init_from), None)
        if upstream is not None and stage.kind != "gap":
            init = stage_output(upstream)
        else:
            init = source if stage.init_from == "source" or stage.kind == "gap" else None
        log.info("stage %s: running in %s", stage.name, stage.run_dir)
        run_stage(stage, init)
        stage.ran = True
        (stage.run_dir / STAGE_FILE).write_text(json.dumps({"key": stage.key, "done": True}) + "\n")
    return write_pipeline_report(Path(spec["output"]), stages, spec)
