"""The training configuration: a typed schema, YAML loading, `--set` overrides and helpful errors.

A config is a YAML mapping validated against `TrainConfig` before anything runs. Every key is in the
schema (unknown keys are refused with the closest valid key suggested), every value is typed and
ranged (an error names the key, the value and what was expected). The schema embeds the pieces that
are validated elsewhere, once: `Normalisation` (dmpose.spec), `DMLossOptions` (dmpose.spec, the
`loss.dm` block), `AugmentConfig` (dmpose.data.transforms); the model's sizes and codec are checked by
building the `PoseSpec` (`TrainConfig.pose_spec`).

Filesystem facts (does the data root exist?) are not part of the schema, so a config validates on
any machine; `check_paths` checks them before training and names the missing path.

`docs/configs.md` is generated from this schema (`python -m dmpose.train.docs`).
"""

from __future__ import annotations

import copy
import difflib
import functools
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dmpose.data.transforms import AugmentConfig
from dmpose.models.registry import OUTPUT_STRIDE
from dmpose.spec import CodecSpec, DMLossOptions, KeypointSpec, Normalisation, PoseSpec, SpecError, describe_error
from dmpose.weights import is_published

__all__ = ["TrainConfig", "ConfigError", "load_config", "parse_overrides", "apply_overrides", "check_paths",
           "resolve_config_path", "packaged_configs", "config_to_yaml"]

_STRICT = ConfigDict(extra="forbid", validate_default=True)


class ConfigError(ValueError):
    """A config is invalid; the message names the source, the key, the value and what was expected."""


def _numeric(annotation: Any) -> bool:
    """Whether a field's type holds numbers (int, float, or a union / Literal with them)."""
    if annotation in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(annotation) if a is not type(None))


class _Section(BaseModel):
    """A config section: unknown keys refused, defaults validated, paths with ~ expanded, and YAML's booleans
    refused where a number is expected (`epochs: true` is not 1)."""

    model_config = _STRICT

    @field_validator("*", mode="before")
    @classmethod
    def _strict_values(cls, v: Any, info) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(v, bool) and _numeric(annotation) and bool not in typing.get_args(annotation) \
                and annotation is not bool:
            raise ValueError(f"{info.field_name} must be a number, got {v!r}")
        if isinstance(v, str) and v.startswith("~") and "Path" in str(annotation):
            return str(Path(v).expanduser())
        return v


class ModelConfig(_Section):
    """The network and its input."""

    model_config = _STRICT
    arch: str = Field("hrnet_tiny", description="Registry name (`dmpose models list`), e.g. hrnet_w32.")
    keypoints: str = Field("coco17", description="Keypoint set: coco17, mpii16 or a keypoint YAML file.")
    input_wh: tuple[int, int] = Field((96, 128), description="Input crop (width, height) in pixels.")
    output_stride: int = Field(4, ge=1, description="Input pixels per heatmap pixel.")
    normalisation: Normalisation = Field(Normalisation(), description="Input normalisation (dmpose.spec).")
    pretrained: str | None = Field(None, description="Initial weights: `imagenet` (the arch's published ImageNet "
                                   "backbone, fetched once: `dmpose weights list`), a published name, an http(s) URL "
                                   "or a file (HRNet/MMPose .pth, torchvision ResNet, a dmpose checkpoint), read by "
                                   "`dmpose convert`'s reader; null: from scratch (logged).")
    pretrained_head: bool = Field(True, description="Also load the heatmap head (final layer) from model.pretrained; "
                                  "false: the head stays freshly initialised and only the rest (the backbone) is "
                                  "loaded.")
    sync_bn: bool = Field(False, description="Convert BatchNorm to SyncBatchNorm under DDP.")
    channels_last: bool = Field(False, description="channels_last memory format for the model and inputs.")
    compile: bool = Field(False, description="torch.compile the model for training.")


class MSEOptions(_Section):
    """Gaussian targets for the MSE baseline."""

    model_config = _STRICT
    sigma: float | None = Field(None, gt=0, allow_inf_nan=False, description="Gaussian sigma in heatmap px; null: "
                                "heatmap height / 32 (the HRNet recipes: 2 at 64x48, 3 at 96x72).")
    flavour: Literal["official", "unbiased"] = Field("official", description="official: peak at the rounded pixel "
                                                    "(HRNet code); unbiased: at the sub-pixel dot.")


class LossConfig(_Section):
    """The training loss; the decode rule follows it through the spec's codec."""

    model_config = _STRICT
    name: Literal["dm", "mse"] = Field("dm", description="dm: distribution matching; mse: Gaussian heatmaps.")
    dm: DMLossOptions = Field(DMLossOptions(), description="Options of `dm_loss` (dmpose.spec.DMLossOptions).")
    mse: MSEOptions = Field(MSEOptions(), description="Options of the MSE baseline.")
    joint_threshold: float | None = Field(None, ge=0, le=1, description="Rescoring joint threshold; null: the "
                                          "decode rule's default.")
    decode: Literal["2x2", "argmax"] | None = Field(None, description="Decode rule; null: the loss's own (dm: "
                                                    "2x2, mse: argmax). Set it to cross them (DM + argmax, MSE + "
                                                    "2x2); the rescoring threshold follows the rule.")
    dm_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="dm only: weight of the DM term itself; "
                             "0 with an auxiliary term trains on that term alone (the ablation of what DM adds).")
    aux_mse: float = Field(0.0, ge=0, allow_inf_nan=False, description="dm only: weight of an auxiliary MSE "
                           "term on Gaussian targets (loss.mse's sigma and flavour) added to the DM loss; 0: pure "
                           "DM (docs/training.md).")
    aux_ce: float = Field(0.0, ge=0, allow_inf_nan=False, description="dm only (softplus suppliers): weight of "
                          "an auxiliary cross-entropy of the supplier distribution at the demanders "
                          "(dmpose.loss.demander_cross_entropy) added to the DM loss; 0: pure DM.")
    joint_weights: Literal["oks"] | list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        None, description="Per-joint weights of the training loss, multiplying the visibility weights (as "
        "MMPose's dataset joint_weights): one positive number per joint of model.keypoints, or 'oks': 1 / sigma_j from "
        "the keypoint set's OKS sigmas, scaled to mean 1 (the face's small tolerance weighs more); null: all 1. MSE "
        "squares them with the residual (HRNet's use_target_weight); validation losses stay unweighted.")
    aux_until: float | None = Field(1.0, gt=0, le=1, description="Fraction of the training steps over which "
                                    "the auxiliary weights (aux_mse, aux_ce) fall linearly to 0 (1: to the last "
                                    "step; the loss of the steps after it is pure DM); null: they stay constant.")

    @model_validator(mode="after")
    def _aux_only_for_dm(self) -> LossConfig:
        for key in ("aux_mse", "aux_ce"):
            if getattr(self, key) > 0 and self.name != "dm":
                raise ValueError(f"loss.{key} = {getattr(self, key):g} adds a term to the DM loss; it needs "
                                 f"loss.name 'dm', got {self.name!r} (set loss.{key}=0 as well)")
        if self.dm_weight != 1 and self.name != "dm":
            raise ValueError(f"loss.dm_weight = {self.dm_weight:g} weights the DM term; it needs loss.name 'dm', got "
                             f"{self.name!r}")
        if self.dm_weight == 0 and self.aux_mse == 0 and self.aux_ce == 0:
            raise ValueError("loss.dm_weight = 0 with no auxiliary term (loss.aux_mse, loss.aux_ce) leaves nothing "
                             "to train on")
        if self.aux_ce > 0 and self.dm.suppliers != "softplus":
            raise ValueError(f"loss.aux_ce needs loss.dm.suppliers 'softplus', got {self.dm.suppliers!r} (the log "
                             "of a relu map is -inf on its non-positive pixels)")
        return self

    def aux_weight(self, progress: float, key: str) -> float:
        """The auxiliary weight `key` (aux_mse or aux_ce) at `progress` = step / total steps in [0, 1]."""
        if self.aux_until is None:
            return getattr(self, key)
        return getattr(self, key) * max(0.0, 1.0 - progress / self.aux_until)


class SyntheticConfig(_Section):
    """The generated dataset (`dmpose data synth`), made on first use when data.dataset is synthetic."""

    model_config = _STRICT
    n_train: int = Field(1000, ge=1, description="Training images.")
    n_val: int = Field(100, ge=1, description="Validation images.")
    seed: int = Field(0, ge=0, description="Generator seed.")


class DataConfig(_Section):
    """Where the data is and how it is read."""

    model_config = _STRICT
    dataset: Literal["coco", "mpii", "synthetic"] = Field("synthetic", description="coco (any COCO-format "
                                                          "keypoint data), mpii, or synthetic (generated).")
    root: Path | None = Field(None, description="Dataset root; null with synthetic: the cache folder "
                              "($DMPOSE_CACHE/synthetic-coco).")
    train_split: str = Field("train2017", description="COCO: split name (annotations/person_keypoints_SPLIT.json, "
                             "SPLIT/); MPII: annot/SPLIT.json.")
    val_split: str = Field("val2017", description="Validation split (MPII: valid).")
    train_ann: Path | None = Field(None, description="Explicit training annotation file (overrides the layout).")
    train_images: Path | None = Field(None, description="Explicit training image folder.")
    val_ann: Path | None = Field(None, description="Explicit validation annotation file.")
    val_images: Path | None = Field(None, description="Explicit validation image folder.")
    detections: Path | None = Field(None, description="COCO: person detections json for validation; null: "
                                    "ROOT/person_detection_results/COCO_val2017_detections_AP_H_56_person.json.")
    mpii_gt: Path | None = Field(None, description="MPII: gt_SPLIT.mat-style file; null: ROOT/annot/gt_SPLIT.mat.")
    subset: int | None = Field(None, ge=1, description="Train on the persons of the first N images only (COCO "
                               "and MPII).")
    val_subset: int | None = Field(None, ge=1, description="Validate on the first N images only (MPII: the first "
                                   "N persons, the rows of its ground-truth file).")
    cache_images: bool = Field(False, description="Keep decoded images in memory (per data-loader process).")
    padding: float = Field(1.25, gt=0, description="Person box padding.")
    augment: AugmentConfig = Field(AugmentConfig(), description="Training augmentation (HRNet recipe).")
    synthetic: SyntheticConfig = Field(SyntheticConfig(), description="Generated dataset sizes.")


class OptimConfig(_Section):
    """Optimiser."""

    model_config = _STRICT
    name: Literal["adam", "adamw"] = Field("adam", description="adam (HRNet/SimpleBaseline) or adamw (HRFormer).")
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False, description="Learning rate at the reference batch.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (the official HRNet code gives Adam none).")
    no_decay: list[str] = Field([], description="Parameter-name substrings excluded from weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    ref_batch: int | None = Field(None, ge=1, description="Scale lr by total batch / ref_batch (linear rule); "
                                  "null: no scaling.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm; null: off.")
    fused: bool = Field(True, description="torch's fused Adam/AdamW (one kernel for all parameters, CPU and CUDA; "
                        "5x cheaper than the per-parameter loop on the default job); false: that loop.")


class ScheduleConfig(_Section):
    """Learning-rate schedule, in epochs or steps (never wall clock)."""

    model_config = _STRICT
    name: Literal["step", "cosine", "linear", "constant"] = Field("step", description="step: x gamma at each "
                                                                 "milestone; cosine / linear: to min_lr at the end.")
    unit: Literal["epoch", "step"] = Field("epoch", description="Unit of milestones and warm-up.")
    milestones: list[int] = Field([170, 200], description="Step schedule milestones.")
    gamma: float = Field(0.1, gt=0, le=1, description="Step schedule factor.")
    warmup: int = Field(0, ge=0, description="Linear warm-up length (in `warmup_unit`).")
    warmup_unit: Literal["epoch", "step"] | None = Field(None, description="Unit of the warm-up; null: `unit`. "
                                                         "HRFormer: 500 steps of warm-up, milestones in epochs.")
    warmup_start: float = Field(0.001, ge=0, le=1, description="Warm-up starts at this fraction of the lr.")
    min_lr: float = Field(0.0, ge=0, description="Floor of the cosine and linear schedules (absolute lr).")


class TrainLoopConfig(_Section):
    """The loop."""

    model_config = _STRICT
    epochs: int = Field(210, ge=1, description="Training epochs.")
    batch_size: int = Field(32, ge=1, description="Images per device (per process) per step.")
    processes: int = Field(1, ge=1, description="CPU data parallel: this many local DDP processes (gloo), started "
                           "by `dmpose train` itself, each with its share of the cores and batch_size images "
                           "(effective batch processes x batch_size); on a GPU one process with that batch; "
                           "under torchrun keep 1 (dmpose.train.processes).")
    accum_steps: int = Field(1, ge=1, description="Gradient accumulation: micro-batches per optimiser step.")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="auto: bf16 where the GPU supports it, "
                                                        "else fp16 with a scaler; on the CPU bf16 where it is "
                                                        "native (AVX512-BF16/AMX), else off. The losses are fp32.")
    ema: float | None = Field(None, gt=0, lt=1, description="EMA decay of the weights, warmed up as min(decay, "
                              "(1 + t) / (10 + t)) at step t; null: off. With EMA, best is chosen on the EMA weights.")
    seed: int = Field(0, ge=0, description="Seed of every RNG.")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms (slower on GPU).")
    threads: int | Literal["auto"] = Field("auto", description="torch CPU threads (>= 1); auto: chosen and logged.")
    workers: int | Literal["auto"] = Field("auto", description="Data-loader processes (>= 0); auto: chosen and "
                                           "logged.")
    log_every: int = Field(10, ge=1, description="Optimiser steps between metrics.jsonl rows.")
    max_bad_steps: int = Field(20, ge=1, description="Stop after this many non-finite steps in a row.")
    checkpoint_every: int | None = Field(None, ge=1, description="Also keep epoch_NNN.safetensors every N epochs.")
    device: str | None = Field(None, pattern=r"^(cpu|cuda|cuda:\d+|mps)$", description="cpu, cuda, cuda:1 (or mps); "
                               "null: cuda when available.")
    curves: bool = Field(True, description="Draw curves.png at each validation and at the end (about 1-3 s each "
                         "on a CPU).")

    @field_validator("threads", "workers", mode="before")
    @classmethod
    def _counts(cls, value: Any, info) -> Any:
        low = 1 if info.field_name == "threads" else 0
        if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise ValueError(f"{info.field_name} must be 'auto' or an integer >= {low}, got {value!r}")
        return value

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted `off` (in a file or `--set train.amp=off`) as false: that is "off"."""
        return "off" if value is False else value


class LoggingConfig(_Section):
    """Where the metrics go besides the run folder's metrics.csv / metrics.jsonl."""

    tensorboard: bool = Field(False, description="Also write TensorBoard events to RUN/tensorboard (the tensorboard "
                              "extra: pip install 'dmpose[tensorboard]'); other loggers (W&B, MLflow) are a callback "
                              "of train(..., callbacks=[...]) (dmpose.train.events).")


class ValConfig(_Section):
    """Validation (the same code as `dmpose eval`)."""

    model_config = _STRICT
    every: int = Field(1, ge=1, description="Validate every N epochs (and after the last).")
    boxes: Literal["detections", "gt"] | None = Field(None, description="Person boxes validated: detections or "
                                                      "ground truth (labelled in every output); null: detections "
                                                      "for COCO-format data, gt for MPII (which has no detections).")
    flip: bool = Field(True, description="Flip test.")
    batch_size: int = Field(64, ge=1, description="Validation crops per batch.")
    oks_threshold: float = Field(0.9, gt=0, le=1, description="OKS-NMS threshold.")
    crops: int = Field(8, ge=0, description="Validation crops drawn in val_epochNNN.jpg.")


@functools.lru_cache(maxsize=8)
def resolve_joint_weights(keypoints: str, value: str | tuple[float, ...]) -> tuple[float, ...]:
    """loss.joint_weights for the keypoint set `keypoints`: 'oks' gives 1 / sigma_j from its OKS sigmas,
    scaled to mean 1; a tuple must hold one weight per joint."""
    kps = KeypointSpec.builtin(keypoints)
    if value == "oks":
        if kps.sigmas is None:
            raise ValueError(f"loss.joint_weights 'oks' needs OKS sigmas, and keypoint set {kps.name!r} has none "
                             "(give one weight per joint instead)")
        inverse = [1.0 / s for s in kps.sigmas]
        return tuple(v * len(inverse) / sum(inverse) for v in inverse)
    if len(value) != len(kps.names):
        raise ValueError(f"loss.joint_weights lists {len(value)} weights; keypoint set {kps.name!r} has "
                         f"{len(kps.names)} joints")
    return tuple(float(v) for v in value)


class TrainConfig(_Section):
    """A training run: `dmpose train CONFIG.yaml`."""

    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Run name: runs/NAME.")
    out_root: Path = Field(Path("runs"), description="Folder holding the runs.")
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainLoopConfig = TrainLoopConfig()
    val: ValConfig = ValConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _spec(self) -> TrainConfig:
        self.pose_spec()  # sizes, stride, codec: PoseSpec's validators, not repeated here
        if self.model.output_stride != OUTPUT_STRIDE:
            raise ValueError(f"model.output_stride {self.model.output_stride}: the registered architectures output "
                             f"heatmaps at stride {OUTPUT_STRIDE} (input_wh / {OUTPUT_STRIDE})")
        if self.loss.dm.reduction != "mean":
            raise ValueError("loss.dm.reduction: the trainer reduces with 'mean' (sum over joints, mean over the "
                             f"batch); got {self.loss.dm.reduction!r}")
        if self.data.dataset == "mpii":
            if self.model.keypoints == "coco17":
                raise ValueError("data.dataset mpii needs model.keypoints mpii16")
            if self.val.boxes == "detections" or self.data.detections is not None:
                raise ValueError("MPII is validated on its annotated person boxes (PCKh): val.boxes must be gt (or "
                                 "null) and data.detections unset for data.dataset mpii")
        if self.val.boxes is None:  # resolved here, so that config.yaml states it
            self.val.boxes = "gt" if self.data.dataset == "mpii" else "detections"
        self.joint_weights()
        return self

    def joint_weights(self) -> tuple[float, ...] | None:
        """loss.joint_weights resolved for model.keypoints (None: all 1)."""
        jw = self.loss.joint_weights
        return None if jw is None else resolve_joint_weights(self.model.keypoints, jw if jw == "oks" else tuple(jw))

    def codec_spec(self) -> CodecSpec:
        if self.loss.name == "dm":
            return CodecSpec(name="dm", supplier_map=self.loss.dm.suppliers, supplier_beta=self.loss.dm.supplier_beta,
                             decode=self.loss.decode, joint_threshold=self.loss.joint_threshold)
        return CodecSpec(name="gaussian", sigma=self.mse_sigma(), flavour=self.loss.mse.flavour,
                         decode=self.loss.decode, joint_threshold=self.loss.joint_threshold)

    def mse_sigma(self) -> float:
        """The Gaussian targets' sigma in heatmap px: loss.mse.sigma, or heatmap height / 32 (HRNet's recipes)."""
        if self.loss.mse.sigma is not None:
            return self.loss.mse.sigma
        return (self.model.input_wh[1] // self.model.output_stride) / 32

    def pose_spec(self) -> PoseSpec:
        """The spec of the trained model (validated by PoseSpec itself)."""
        try:
            kps = KeypointSpec.builtin(self.model.keypoints)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"model.keypoints: {e}") from None
        try:
            return PoseSpec.build(self.model.arch, kps, self.model.input_wh, output_stride=self.model.output_stride,
                                  codec=self.codec_spec(), normalisation=self.model.normalisation)
        except SpecError as e:
            raise ValueError(f"model: {e}") from None


# ---- errors --------------------------------------------------------------------------------------

def _field_names(model: type[BaseModel] | Any) -> list[str]:
    fields = getattr(model, "model_fields", None)
    if fields is not None:
        return list(fields)
    dc = getattr(model, "__dataclass_fields__", None)
    return list(dc) if dc else []


def _sub_type(model: Any, name: str) -> Any:
    fields = getattr(model, "model_fields", None)
    ann = fields[name].annotation if fields and name in fields else None
    if ann is None and getattr(model, "__dataclass_fields__", None) and name in model.__dataclass_fields__:
        ann = model.__dataclass_fields__[name].type
    if isinstance(ann, type):
        return ann
    for arg in typing.get_args(ann):
        if isinstance(arg, type) and (_field_names(arg)):
            return arg
    return None


def _model_at(loc: tuple) -> Any:
    model: Any = TrainConfig
    for part in loc:
        model = _sub_type(model, str(part)) if model is not None else None
    return model


def _describe(e: dict) -> str:
    loc = tuple(str(p) for p in e["loc"])
    key = ".".join(loc)
    if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        parent, name = loc[:-1], loc[-1]
        valid = _field_names(_model_at(parent))
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
        # a key that belongs one level down or elsewhere: search the whole schema for the name
        hint = f"; did you mean '{'.'.join((*parent, close[0]))}'?" if close else ""
        if not close:
            where = _find_key(name)
            if where:
                hint = f"; did you mean '{where}'?"
        return f"unknown key '{key}'{hint} (valid keys here: {', '.join(valid)})"
    return describe_error(e, key)


def _find_key(name: str, model: Any = TrainConfig, prefix: tuple = ()) -> str | None:
    best, best_score = None, 0.0
    for field in _field_names(model):
        score = difflib.SequenceMatcher(None, name, field).ratio()
        if score > best_score and score >= 0.75:
            best, best_score = ".".join((*prefix, field)), score
        sub = _sub_type(model, field)
        if sub is not None and len(prefix) < 3:
            found = _find_key(name, sub, (*prefix, field))
            if found and difflib.SequenceMatcher(None, name, found.rsplit(".", 1)[-1]).ratio() > best_score:
                best, best_score = found, difflib.SequenceMatcher(None, name, found.rsplit(".", 1)[-1]).ratio()
    return best


def validate_config(data: Any, source: str) -> TrainConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(f"{source}: {_describe(x)}" for x in e.errors())) from None


# ---- loading and overrides -----------------------------------------------------------------------

def packaged_configs() -> dict[str, Path]:
    """Configs shipped in the package, by name: 'synthetic', 'coco/hrnet_w32_256x192_dm', ..."""
    root = Path(__file__).resolve().parent.parent / "configs"
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob("*.yaml"))}


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a packaged config (`synthetic`, `coco/hrnet_w32_256x192_dm`)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = packaged_configs()
    key = str(name_or_path).removesuffix(".yaml").removeprefix("configs/")
    if key in shipped:
        return shipped[key]
    close = difflib.get_close_matches(key, list(shipped), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; shipped configs: {', '.join(shipped)}"
    raise ConfigError(f"config not found: {name_or_path} (neither a file nor a shipped config name){hint}")


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """'a.b=value' strings -> (key, YAML-parsed value)."""
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=5")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
        out.append((key, parsed))
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would let the last one win)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def apply_overrides(data: dict, overrides: list[tuple[str, Any]]) -> dict:
    for key, value in overrides:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: '{part}' is a value ({nxt!r}), not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> TrainConfig:
    """Read (a file or a shipped name), apply `--set` overrides, validate. Errors are `ConfigError`."""
    source = "config"
    if data is None:
        if path_or_name is None:
            raise ConfigError("no config given")
        path = resolve_config_path(path_or_name)
        source = str(path_or_name)
        try:
            data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ConfigError(f"{source}: not valid YAML: {getattr(e, 'problem', None) or e}{where}") from None
        if data is None:
            raise ConfigError(f"{source}: the config file is empty (give at least one key, e.g. the shipped "
                              "'synthetic' config's)")
    else:
        data = copy.deepcopy(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping, got {type(data).__name__}")
    parsed = parse_overrides(overrides)
    data = apply_overrides(data, parsed)
    return validate_config(data, source + (" with --set" if parsed else ""))


def config_to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def check_paths(cfg: TrainConfig) -> None:
    """The data the config names exists (synthetic data is generated, so it never fails here)."""
    d = cfg.data
    if d.dataset == "synthetic":
        return
    if d.root is not None and not d.root.is_dir():
        raise ConfigError(f"data.root: the data root does not exist: {d.root} (set data.root, e.g. "
                          f"--set data.root=/path/to/{d.dataset})")
    pretrained = cfg.model.pretrained
    if pretrained is not None and not (pretrained == "imagenet" or is_published(pretrained)):
        pretrained = Path(pretrained).expanduser()
    else:
        pretrained = None  # fetched when the network is built (dmpose.weights)
    for key in ("train_ann", "train_images", "val_ann", "val_images", "detections", "mpii_gt", "model.pretrained"):
        value = pretrained if key == "model.pretrained" else getattr(d, key)
        if value is not None and not Path(value).exists():
            name = key if "." in key else f"data.{key}"
            raise ConfigError(f"{name}: path does not exist: {value}")
    if d.root is None and (d.train_ann is None or d.val_ann is None):
        raise ConfigError("data.root is null: give data.root (or data.train_ann/train_images/val_ann/val_images)")
