"""``cspt pipeline CONFIG.yaml``: source checkpoint -> consecutive pretraining -> fine-tunes -> report.

A pipeline config names its stages::

    output: runs/pipeline
    source: mae_pretrain_vit_base_full.pth   # null: random initialisation
    arms: [direct, cspt]                     # direct: source -> fine-tune; cspt: source -> pretrain -> fine-tune
    pretrain: {data: [/data/target], epochs: 100, ...}        # PretrainConfig options
    replay: {data: [/data/imagenet_val], fraction: 0.25}      # for the cspt_replay arm
    finetune:
      aid: {task: classify, data: /data/AID, train_fraction: 0.2, ...}   # the task's options
    probes:                                                  # optional: frozen-encoder probes of every arm
      aid_knn: {probe: knn, data: /data/AID, train_fraction: 0.2}        # ProbeConfig options
    gap: {source: [/data/imagenet_val], target: [/data/AID], max_images: 256}   # optional
    seeds: [0, 1]                            # optional: every arm once per seed (pretraining/fine-tune ``seed``)
    budgets: [50, 100]                       # optional: every pretraining arm once per budget (its ``epochs``)

Arms: ``direct`` (the source, fine-tuned), ``random`` (random initialisation,
fine-tuned), and the arms with their own pretraining stage, the ``pretrain`` options plus
the arm's own: ``cspt`` (from the source), ``scratch`` (from random initialisation),
``cspt_teacher`` (from the source, guided by it as a frozen teacher: ``--distill-from``),
``fresh_teacher`` (a randomly initialised student guided by the source, GFM's setting)
and ``cspt_replay`` (from the source, with ``replay`` images mixed into every batch).

One arm at one budget and seed is a *chain*, named ``ARM`` or, with ``budgets`` or
``seeds``, ``ARM_eEPOCHS_sSEED``. Each stage runs in its own directory under ``output``
(``pretrain/`` for the bare cspt chain, ``pretrain_CHAIN/`` for the others,
``CHAIN/NAME/`` for fine-tunes and probes, ``gap/``) and records its wall time in
``stage.json``. A finished stage is skipped when its key (a hash of its options and of
its input's key) is unchanged; an interrupted one resumes from its checkpoint; a changed
one starts again. ``--from STAGE`` re-runs that stage and every later one, ``--only
STAGE`` that stage alone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cspt.config import ClassifyConfig, DetectConfig, PretrainConfig, ProbeConfig, SegmentConfig, make_config, read_yaml
from cspt.errors import CsptError
from cspt.weights.export import sha256_of
from cspt.weights.hub import is_hub_name
from cspt.weights.load import checkpoint_file
from cspt.weights.packaged import is_packaged_name

log = logging.getLogger("cspt")

ARMS = ("direct", "random", "cspt", "scratch", "cspt_teacher", "fresh_teacher", "cspt_replay")
#: the arms with a pretraining stage; those guided by the source as a frozen teacher; those whose (student)
#: model starts from random weights instead of the source
PRETRAINING_ARMS = ("cspt", "scratch", "cspt_teacher", "fresh_teacher", "cspt_replay")
TEACHER_ARMS = ("cspt_teacher", "fresh_teacher")
RANDOM_START_ARMS = ("random", "scratch", "fresh_teacher")
TASKS = {"classify": ClassifyConfig, "detect": DetectConfig, "segment": SegmentConfig}
STAGE_FILE = "stage.json"
PIPELINE_KEYS = {"output", "source", "arms", "pretrain", "replay", "finetune", "probes", "gap", "seeds", "budgets",
                 "evidence"}


@dataclass(frozen=True)
class Chain:
    """One arm at one pretraining budget and seed (``None``: the config's own, unnamed)."""

    arm: str
    epochs: int | None = None
    seed: int | None = None

    @property
    def label(self) -> str:
        budget = "" if self.epochs is None else f"_e{self.epochs}"
        return self.arm + budget + ("" if self.seed is None else f"_s{self.seed}")


@dataclass
class Stage:
    """One step of the chain and where it runs."""

    name: str  #: "pretrain", "gap", or "CHAIN/NAME"
    kind: str  #: pretrain, gap, probe, classify, detect or segment
    options: dict[str, Any]
    run_dir: Path
    init_from: str | None = None  #: "source" or the name of the stage whose output it starts from
    chain: Chain | None = None
    key: str = ""
    ran: bool = field(default=False)

    @property
    def arm(self) -> str | None:
        return self.chain.arm if self.chain else None


def read_pipeline(path: str | Path) -> dict[str, Any]:
    """A pipeline spec from YAML, with its arms defaulted and every section checked; one-line errors naming the file."""
    from cspt.tasks.probe import PROBES

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
    for name, options in (spec.get("probes") or {}).items():
        if not isinstance(options, dict) or options.get("probe", "knn") not in PROBES:
            raise CsptError(f"{path}: probe '{name}' needs probe: {' | '.join(PROBES)}")
    for name, record in (spec.get("evidence") or {}).items():
        if not isinstance(record, dict) or not isinstance(record.get("spread"), (int, float)) \
                or not record.get("metric") or not record.get("measured_by"):
            raise CsptError(f"{path}: evidence '{name}' needs metric, spread (a number) and measured_by")
    for key in ("seeds", "budgets"):
        values = spec.get(key)
        if values is not None and (not isinstance(values, list) or not values
                                   or not all(isinstance(v, int) and v >= 0 for v in values)):
            raise CsptError(f"{path}: '{key}' must be a list of whole numbers, got {values!r}")
    return spec


def chains(spec: dict[str, Any]) -> list[Chain]:
    """Every arm at every seed and, for the arms that pretrain, every budget."""
    found = []
    for seed in spec.get("seeds") or [None]:
        for arm in spec["arms"]:
            budgets = (spec.get("budgets") or [None]) if arm in PRETRAINING_ARMS else [None]
            found += [Chain(arm, epochs, seed) for epochs in budgets]
    return found


def plan(spec: dict[str, Any]) -> list[Stage]:
    """The stages of a pipeline spec, in the order they run."""
    output = Path(spec["output"])
    stages = []
    for chain in chains(spec):
        if chain.arm in PRETRAINING_ARMS:
            name = pretraining_stage(chain)
            options = chain_pretraining(spec, chain)
            if chain.arm == "scratch":  # fresh_teacher's student takes the teacher's model (the source) itself
                options = shaped_as_source(options, spec)
            stages.append(Stage(name, "pretrain", options, output / name,
                                None if chain.arm in RANDOM_START_ARMS else "source", chain))
    for chain in chains(spec):
        for name, options in (spec.get("finetune") or {}).items():
            options = seeded(options, chain)
            kind = options.pop("task")
            if chain_input(chain) is None:
                options = shaped_as_source(options, spec)
            stages.append(Stage(f"{chain.label}/{name}", kind, options, output / chain.label / name,
                                chain_input(chain), chain))
    for chain in chains(spec):
        if chain_input(chain) is None:
            continue  # the random arm: no encoder to probe before its fine-tuning
        for name, options in (spec.get("probes") or {}).items():
            stages.append(Stage(f"{chain.label}/{name}", "probe", seeded(options, chain), output / chain.label / name,
                                chain_input(chain), chain))
    if spec.get("gap"):  # measured for the source, and after the (first) cspt pretraining when there is one
        cspt = [stage.name for stage in stages if stage.kind == "pretrain" and stage.arm == "cspt"]
        after = cspt[0] if cspt else "source"
        stages.append(Stage("gap", "gap", dict(spec["gap"]), output / "gap", after))
    return stages


def shaped_as_source(options: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A random-start stage's options with ``shape_from: SOURCE`` (unless they name their own): it builds the
    source's model, bands and pixel contract with random weights, so the arms differ in their initial weights
    only. Unchanged without a source."""
    return {"shape_from": spec["source"], **options} if spec.get("source") else options


def pretraining_stage(chain: Chain) -> str:
    """The name (and folder) of a chain's pretraining stage."""
    return "pretrain" if chain.label == "cspt" else f"pretrain_{chain.label}"


def chain_input(chain: Chain) -> str | None:
    """What a chain's fine-tunes and probes start from: the source, nothing, or its pretraining stage."""
    if chain.arm in PRETRAINING_ARMS:
        return pretraining_stage(chain)
    return None if chain.arm in RANDOM_START_ARMS else "source"


def seeded(options: dict[str, Any], chain: Chain) -> dict[str, Any]:
    """A stage's options with the chain's seed, when the config names seeds."""
    return dict(options) if chain.seed is None else {**options, "seed": chain.seed}


def chain_pretraining(spec: dict[str, Any], chain: Chain) -> dict[str, Any]:
    """The ``pretrain`` options with the chain's own: its budget and seed, the teacher (the source) or the replay
    images of its arm."""
    options = seeded(spec["pretrain"], chain)
    arm = chain.arm
    if chain.epochs is not None:
        options["epochs"] = chain.epochs
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
    target = checkpoint_file(Path(path)) if is_hub_name(path) or is_packaged_name(path) else Path(path)
    if not target.exists():
        raise CsptError(f"{target}: source checkpoint not found")
    stat = target.stat()
    return f"{target.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


@functools.cache
def teacher_content(path: str) -> str:
    """The sha256 of a teacher's weights file (what its pretraining run records and checks on resume)."""
    target = checkpoint_file(Path(path))
    if not target.is_file():
        raise CsptError(f"{target}: teacher checkpoint not found")
    return sha256_of(target)


def stage_key(stage: Stage, input_key: str) -> str:
    """A hash of the stage's options, of its input's key and of its teacher's content (a teacher replaced at
    the same path makes a new stage)."""
    teacher, shape_from = stage.options.get("distill_from"), stage.options.get("shape_from")
    fields = {"kind": stage.kind, "options": stage.options, "input": input_key,
              "teacher": teacher_content(str(teacher)) if teacher else None}
    if shape_from:  # the model of a random start: a checkpoint replaced at the same path makes a new stage
        fields["shape"] = file_identity(str(shape_from))
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_state(stage: Stage) -> dict[str, Any]:
    """What a stage's ``stage.json`` records (its key, whether it is done); empty before it first ran."""
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

    if stage.kind == "probe":
        run_probe_stage(stage, init)
        return
    runners: dict[str, tuple[type, Callable]] = {"pretrain": (PretrainConfig, pretrain),
                                                  "classify": (ClassifyConfig, finetune_classify),
                                                  "detect": (DetectConfig, finetune_detect),
                                                  "segment": (SegmentConfig, finetune_segment)}
    cls, runner = runners[stage.kind]
    values = {**stage.options, "output": str(stage.run_dir), "init": init}
    runner(make_config(cls, values, f"pipeline stage {stage.name}"))


def run_probe_stage(stage: Stage, encoder: str | None) -> None:
    """A kNN or linear probe of a chain's encoder before fine-tuning: ``metrics.json`` in its directory."""
    from cspt.tasks.probe import run_probe

    if not encoder:
        raise CsptError(f"stage {stage.name}: a probe needs an encoder (a source checkpoint or a pretraining stage)")
    options = dict(stage.options)
    kind = options.pop("probe", "knn")
    run_probe(kind, make_config(ProbeConfig, {**options, "checkpoint": encoder, "output": str(stage.run_dir)},
                                f"pipeline stage {stage.name}"))


def run_gap_stage(stage: Stage, source: str | None, pretrained_run: Path | None) -> None:
    """The domain gap of the source checkpoint and, when there is one, of the pretrained encoder."""
    from cspt.metrics import gap_closed
    from cspt.tasks.gap import domain_gap, write_gap

    options = dict(stage.options)
    if not source:
        raise CsptError("the gap stage needs a source checkpoint")
    before = domain_gap(source, options["source"], options["target"], options.get("max_images", 256))
    write_gap(before, stage.run_dir / "source")
    pretrained = pretrained_run / "checkpoints" / "last.pt" if pretrained_run else None
    if pretrained is not None and pretrained.is_file():
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
        log.info("stage %s: running in %s", stage.name, stage.run_dir)
        started = time.perf_counter()
        if stage.kind == "gap":
            run_gap_stage(stage, source, upstream.run_dir if upstream else None)
        else:
            run_stage(stage, stage_output(upstream) if upstream else source if stage.init_from == "source" else None)
        stage.ran = True
        seconds = time.perf_counter() - started  # of the run that finished it (an interrupted part is not counted)
        (stage.run_dir / STAGE_FILE).write_text(json.dumps({"key": stage.key, "done": True, "seconds": seconds})
                                                + "\n")
    return write_pipeline_report(Path(spec["output"]), stages, spec)
