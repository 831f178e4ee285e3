"""Typed schemas of the JSON files diffmem writes and reads back, shared by writer and reader: a
file that does not match is one :class:`~diffmem.errors.DiffmemError` naming the file, the key and
the problem.

Each model lists the keys a reader relies on; other keys are kept (``extra="allow"``) and
documented in ``docs/outputs.md``. Model folders: :class:`ComponentConfig` (a diffusers component's
``config.json``), :class:`SchedulerConfig`, :class:`RecordFile` (``diffmem.json``), :class:`DetectorFile`,
:class:`ConceptFile`, :class:`ClassifierFile`. Results: :class:`AuditFile`, :class:`BenchFile`,
:class:`TuningFile`, :class:`ZooFile`, :class:`VerifyFile`, :class:`MonitorFile`, :class:`SteerFile`."""

from __future__ import annotations

import os
from typing import Literal, Optional, TypeVar, Union

from pydantic import (BaseModel, ConfigDict, RootModel, StrictInt, StrictStr, ValidationError, confloat, conint,
                      conlist, model_validator)

from diffmem.errors import DiffmemError
from diffmem.outputs import jsonable, read_json, write_json

Share = confloat(ge=0, le=1, allow_inf_nan=False)
Count = conint(ge=0, strict=True)
Positive = conint(ge=1, strict=True)
Finite = confloat(allow_inf_nan=False)
Unit = confloat(gt=0, lt=1, allow_inf_nan=False)
Step = Optional[conint(ge=0, strict=True)]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- model folders -----------------------------------------------------------------------------------
class ComponentConfig(_Schema):
    """``config.json`` of a model component: its size and count keys are positive integers (or lists)."""

    sample_size: Optional[Union[Positive, conlist(Positive, min_length=1)]] = None
    in_channels: Optional[Positive] = None
    out_channels: Optional[Positive] = None
    latent_channels: Optional[Positive] = None
    num_class_embeds: Optional[Positive] = None
    cross_attention_dim: Optional[Union[Positive, conlist(Positive, min_length=1)]] = None
    patch_size: Optional[Positive] = None
    num_layers: Optional[Positive] = None
    hidden_size: Optional[Positive] = None
    vocab_size: Optional[Positive] = None
    num_hidden_layers: Optional[Positive] = None
    max_position_embeddings: Optional[Positive] = None
    num_embeds_ada_norm: Optional[Positive] = None
    layers_per_block: Optional[Union[Positive, conlist(Positive, min_length=1)]] = None


class SchedulerConfig(_Schema):
    """``scheduler_config.json``: a diffusers scheduler class, ≥ 2 training timesteps, betas in (0, 1)."""

    class_name: StrictStr = "DDPMScheduler"
    num_train_timesteps: conint(ge=2, strict=True) = 1000
    beta_start: Optional[Unit] = None
    beta_end: Optional[Unit] = None

    model_config = ConfigDict(extra="allow", populate_by_name=True,
                              alias_generator=lambda name: "_class_name" if name == "class_name" else name)


class RecordFile(_Schema):
    """``diffmem.json`` (the training record ``diffmem train`` writes into a model folder)."""

    data: StrictStr
    size: Positive
    indices: conlist(Count, min_length=1)
    copies: conlist(Positive, min_length=1)
    null_class: Optional[Count] = None
    captions: Optional[list[StrictStr]] = None

    @model_validator(mode="after")
    def _one_count_per_index(self):
        if len(self.indices) != len(self.copies):
            raise ValueError(f"{len(self.indices)} indices but {len(self.copies)} copy counts")
        if self.captions is not None and len(self.captions) < max(self.indices) + 1:
            raise ValueError(f"{len(self.captions)} captions, but indices reach {max(self.indices)}")
        return self


class DetectorFile(_Schema):
    """``detector.json`` (a saved :class:`~diffmem.detect.fusion.FusionDetector`): its settings, the family,
    t convention and weights fingerprint of the model it was fitted on, and finite numbers."""

    kind: Literal["FusionDetector"]
    params: dict
    t: Finite
    features: conlist(StrictStr, min_length=1)
    intercept: Finite
    threshold: Finite
    fpr: Unit
    calibration: dict = {}
    selection: list = []
    pool: Optional[str] = None
    family: Optional[str] = None
    t_convention: Optional[Literal["timestep", "sigma"]] = None
    model_weights: Optional[str] = None


class ConceptFile(_Schema):
    """``concept.json`` (a saved :class:`~diffmem.steer.concept.ConceptVector`)."""

    layers: conlist(StrictStr, min_length=1)
    t: Finite
    mode: StrictStr
    pool: StrictStr
    weights: dict[str, Finite] = {}
    seed: StrictInt
    n_positives: Positive


class ClassifierFile(_Schema):
    """``classifier.json`` (the shipped Fashion-MNIST classifier steering scores with)."""

    size: Positive
    test_accuracy: Share


# -- results -----------------------------------------------------------------------------------------
class ConditionRow(_Schema):
    condition: object
    n: Count
    n_flagged: Count
    share_flagged: Share


class AuditFile(_Schema):
    """``audit.json`` (``diffmem audit``; read by ``diffmem report``)."""

    n: conint(ge=1)
    n_flagged: Count
    share_flagged: Share
    share_flagged_ci: tuple[Share, Share]
    threshold: Finite
    fpr_target: Unit
    realized_fpr_reference: Share
    fpr_real_reference: Optional[Share] = None
    fpr_generated_non_copies: Optional[Share] = None
    n_reference: conint(ge=1)
    calibration: str
    verdict: str
    per_condition: list[ConditionRow]


class MeanSd(_Schema):
    mean: float
    sd: float


class Rates(_Schema):
    fpr: Optional[MeanSd] = None
    tpr: Optional[MeanSd] = None


class BenchMethod(_Schema):
    auroc: MeanSd
    tpr_at_1pct_fpr: MeanSd
    deployable: Rates
    unlabelled: Optional[Rates] = None


class BenchFile(_Schema):
    """``bench.json`` (``diffmem bench``: every method under one protocol, mean ± sd over seeds)."""

    seeds: conlist(StrictInt, min_length=1)
    split: dict
    methods: dict[str, BenchMethod]
    prompt_methods: Optional[dict[str, BenchMethod]] = None
    detector: Optional[str] = None

    @model_validator(mode="after")
    def _split_has_overlap(self):
        if "overlap" not in self.split:
            raise ValueError("split: no overlap")
        return self


class Candidate(_Schema):
    setting: dict
    auroc: Optional[float]


class TuningEntry(_Schema):
    chosen: dict
    candidates: list[Candidate] = []


class TuningFile(RootModel[dict[str, dict[str, TuningEntry]]]):
    """``tuning.json`` (``diffmem bench``: seed → method → the candidates it was tuned over)."""

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.root:
            raise ValueError("no seed's tuning in it")
        return self


class ZooFile(_Schema):
    """``zoo.json`` (``diffmem bench zoo``: label-free scores across the model zoo)."""

    seeds: conlist(StrictInt, min_length=1)
    scores: conlist(StrictStr, min_length=1)
    models: dict[str, dict]
    worst_case: dict
    default: dict


class Regime(_Schema):
    rel_err: Finite
    rep_std_train: Finite


class VerifyFile(_Schema):
    """``verify.json`` (``diffmem theory verify``: trained ReLU-DAEs against the closed-form minimizers)."""

    regimes: dict[str, Regime]


class MonitorRun(_Schema):
    alarm_step: Step
    onset_step: Step = None
    baselines: dict[str, Step]
    checkpoints: list[dict]


class MonitorFile(_Schema):
    """``monitor.json`` (``diffmem monitor``, ``train --monitor``, ``monitor --demo``: one object per run)."""

    runs: dict[str, MonitorRun]


class SteerGroup(_Schema):
    n: Count
    attribute_gain: Optional[float] = None
    monotonicity: Optional[float] = None
    pixel_jump_fraction: Optional[float] = None
    output_change_per_unit: Optional[float] = None


class SteerFile(_Schema):
    """``steer.json`` (``diffmem steer``: steering effect per group of samples)."""

    concept: StrictStr
    measure: Optional[str] = None
    groups: dict[str, SteerGroup]


S = TypeVar("S", bound=BaseModel)


def _where(exc: ValidationError) -> str:
    """The key and problem of a validation error (of alternatives, the one that got deepest into the data)."""
    e = max(exc.errors(), key=lambda e: len(e["loc"]))
    loc = [str(p) for p in e["loc"] if not (isinstance(p, str) and ("[" in p or "-" in p))]   # no type tags
    return f"key {'.'.join(loc) or '(top)'}: {e['msg']}"


def _name(schema) -> str:
    return schema.__doc__.split()[0].strip("`:")


def validate(data, schema: type[S], what: str) -> dict:
    """``data`` validated against ``schema`` (as a plain dict); ``what`` names it in the error."""
    try:
        return schema.model_validate(data).model_dump(mode="json", by_alias=True)
    except ValidationError as exc:
        raise DiffmemError(f"{what}: not a valid {_name(schema)} ({_where(exc)})") from None


def read_result(path: str | os.PathLike, schema: type[S]) -> dict:
    """The JSON file at ``path`` validated against ``schema`` (as a plain dict)."""
    return validate(read_json(path), schema, str(path))


def write_result(path: str | os.PathLike, data: dict, schema: type[S]):
    """Validate ``data`` against ``schema`` and write it (a writer bug is caught before the file exists)."""
    data = jsonable(data)                 # numpy scalars become numbers, NaN/inf null
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        raise DiffmemError(f"{path}: would not be a valid {_name(schema)} ({_where(exc)})") from None
    return write_json(path, data)
