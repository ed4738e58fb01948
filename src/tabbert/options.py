"""Each step's options, declared once: the Python API and the command line are both made from them.

An options class is a frozen dataclass whose fields are made by :func:`option`; each field
carries its help text, choices and bounds. :meth:`Options.create` builds one from keyword
arguments and checks it (the Python API: ``finetune(data, out, epochs=3)``).
:func:`add_arguments` declares the same fields as command-line options (flags, choices,
defaults and help all come from the field), and :meth:`Options.from_arguments` reads them back.
The two cannot disagree. A value outside its choices or bounds raises
:class:`~tabbert.errors.TabbertError`, naming the option.

This module imports nothing heavy, so a command's ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from tabbert.data.schema import TIME_FEATURES
from tabbert.data.windows import LABEL_MODES, POINT_KINDS, SPLIT_METHODS, TARGET_MODES, split_fractions
from tabbert.errors import TabbertError
from tabbert.models.sizes import MODEL_SIZES

SOURCES = ("card", "prsa", "generic")
SIZES = tuple(MODEL_SIZES)
OBJECTIVES = ("masked", "causal")  # tabbert.models.configuration.OBJECTIVES
TASKS = ("classification", "regression")
ENCODERS = ("pretrained", "raw")
HEADS = ("lstm", "mlp")  # the classes behind these names: tabbert.models.classifier.HEADS
LOSSES = {"classification": ("ce", "rmse"), "regression": ("mse", "rmse")}
IMBALANCE = ("upsample", "weights", "none")
CLASSIFICATION_METRICS = ("pr_auc", "roc_auc", "f1", "precision", "recall", "recall_at_1pct_fpr")
BASELINE_KINDS = ("lightgbm", "lstm", "mlp")
LIGHTGBM_FEATURES = ("history", "window")
DEVICE_HELP = "auto (cuda when available), cpu, cuda or cuda:N"
THREADS_HELP = "CPU threads (default: torch's, or the cores left free when the machine is busy)"


def option(default: Any = dataclasses.MISSING, *, help: str, choices: tuple | None = None,
           at_least: float | None = None, above: float | None = None, below: float | None = None,
           aliases: tuple[str, ...] = (), group: str | None = None, cli: bool = True, valid: Any = None,
           **argparse_settings) -> Any:
    """A dataclass field with what the command line and the checks need to know about it.

    ``choices`` are the allowed values (of each element, for a tuple); ``at_least``, ``above``
    and ``below`` bound a number; ``aliases`` are further flags (the first flag is the field's
    name with dashes); ``group`` titles the ``--help`` section; ``cli=False`` keeps the field
    off the command line; ``valid`` checks a value choices cannot list (it raises
    :class:`TabbertError`). Other keywords (``type``, ``metavar``, ``nargs``) go to argparse.
    """
    metadata = dict(help=help, choices=choices, at_least=at_least, above=above, below=below, aliases=aliases,
                    group=group, cli=cli, valid=valid, argparse=argparse_settings)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Options:
    """Base of the options classes: building, checking and the command-line round trip."""

    step: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, list):  # argparse and JSON give lists where a tuple is declared
                object.__setattr__(self, item.name, tuple(value))
            _check_field(item, getattr(self, item.name))
        self.check()

    def check(self) -> None:
        """Rules between options; subclasses add theirs."""

    @classmethod
    def names(cls) -> set[str]:
        return {item.name for item in dataclasses.fields(cls)}

    @classmethod
    def create(cls, options: Self | None = None, /, **settings) -> Self:
        """``options`` (or the defaults) with ``settings`` changed, checked."""
        unknown = sorted(set(settings) - cls.names())
        if unknown:
            raise TabbertError(f"unknown {cls.step} option(s) {unknown}; the options are {sorted(cls.names())}")
        return dataclasses.replace(options, **settings) if options is not None else cls(**settings)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Self:
        """The options given on a command line declared by :func:`add_arguments` (the rest keep their defaults)."""
        given = vars(args)
        return cls.create(**{name: given[name] for name in cls.names() if name in given})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_field(item: dataclasses.Field, value: Any) -> None:
    """Raise :class:`TabbertError` unless ``value`` is within the field's choices and bounds."""
    meta = item.metadata
    if value is None or not meta:
        return
    if meta["valid"] is not None:
        meta["valid"](value)
    choices = meta["choices"]
    for element in value if isinstance(value, tuple) else (value,):
        if choices is not None and element not in choices:
            raise TabbertError(f"{item.name} must be one of {choices}, got {element!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if meta["at_least"] is not None and not value >= meta["at_least"]:
        raise TabbertError(f"{item.name} must be at least {meta['at_least']}, got {value}")
    if meta["above"] is not None and not value > meta["above"]:
        raise TabbertError(f"{item.name} must be above {meta['above']}, got {value}")
    if meta["below"] is not None and not value < meta["below"]:
        raise TabbertError(f"{item.name} must be below {meta['below']}, got {value}")


def add_arguments(parser: argparse.ArgumentParser, options_class: type[Options]) -> None:
    """Declare the fields of ``options_class`` as command-line options of ``parser``.

    An option left off the command line is left out of the parsed arguments, so the dataclass
    default applies: defaults live in one place.
    """
    hints = typing.get_type_hints(options_class)
    groups: dict[str | None, Any] = {None: parser}
    for item in dataclasses.fields(options_class):
        meta = item.metadata
        if not meta.get("cli", False):
            continue
        group = meta["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        flags = [f"--{item.name.replace('_', '-')}", *meta["aliases"]]
        groups[group].add_argument(*flags, dest=item.name, **_argument_settings(item, hints[item.name]))


def add_threshold_option(parser: argparse.ArgumentParser) -> None:
    """Declare ``--threshold SPEC`` (:mod:`tabbert.thresholds`), a bad spec refused as it is parsed."""
    parser.add_argument("--threshold", type=_threshold_spec, metavar="SPEC",
                        help="decision threshold: a number, fpr:RATE (that false-positive rate on validation), "
                        "alerts:N (N alerts per day on validation) or best-f1 (default)")


def _threshold_spec(text: str) -> str:
    from tabbert.thresholds import ThresholdSpec

    try:
        return str(ThresholdSpec.parse(text))
    except TabbertError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _argument_settings(item: dataclasses.Field, hint: Any) -> dict:
    meta = item.metadata
    settings = {"help": meta["help"], "default": argparse.SUPPRESS, **meta["argparse"]}
    required = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
    if hint is bool:
        return {**settings, "action": "store_true"}
    settings.setdefault("type", _element_type(hint))
    if meta["choices"] is not None:
        settings["choices"] = meta["choices"]
    if required:
        settings["required"] = True
    elif item.default is not None:
        shown = " ".join(map(str, item.default)) if isinstance(item.default, tuple) else item.default
        settings["help"] += f" (default {shown})"
    return settings


def _element_type(hint: Any) -> type:
    """``int`` for ``int``, ``int | None`` and ``tuple[int, ...]``: the type argparse converts each value to."""
    if typing.get_origin(hint) in (typing.Union, type(int | None)):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return hint


def _check_device(value: str) -> None:
    if value not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", value):
        raise TabbertError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")


def threads_option(help: str = THREADS_HELP, **settings) -> Any:
    """The ``--threads`` field of a step that computes (see :mod:`tabbert.threads`)."""
    return option(None, help=help, at_least=1, metavar="N", **settings)


def device_option(help: str = DEVICE_HELP, **settings) -> Any:
    """The ``--device`` field of a step that runs a model (see :func:`tabbert.runs.choose_device`)."""
    return option("auto", help=help, valid=_check_device, **settings)


# ---------------------------------------------------------------------------------------------- the steps


@dataclass(frozen=True)
class ComputeOptions(Options):
    """Threads and device of the steps that run a model without training one: evaluate, predict, embed."""

    step: ClassVar[str] = "compute"

    threads: int | None = threads_option()
    device: str = device_option()


@dataclass(frozen=True)
class PrepareOptions(Options):
    """How ``prepare`` reads, splits and windows a raw table."""

    step: ClassVar[str] = "prepare"

    source: str = option(help="input format: IBM card transactions, UCI PRSA air quality, or generic with --schema",
                         choices=SOURCES)
    schema: str | None = option(None, help="schema file (JSON or YAML) for --source generic")
    seq_len: int = option(10, help="rows per window", at_least=1)
    stride: int = option(5, help="rows between window starts", at_least=1)
    split: str = option("entity", choices=SPLIT_METHODS,
                        help="entity (no leakage), time (by the window's newest row), or random "
                        "(the reference protocol; overlapping windows leak across splits)")
    fractions: tuple[float, float, float] = option((0.6, 0.2, 0.2), help="split fractions", nargs=3,
                                                   metavar=("TRAIN", "VAL", "TEST"))
    cutoffs: tuple[str, str] | None = option(None, nargs=2, metavar=("VAL_START", "TEST_START"),
                                             help="with --split time: dates where validation and test begin "
                                             "(default: quantiles of --fractions)")
    keep_missing: bool = option(False, help="prsa: keep rows with missing inputs as a [MISSING] token instead of "
                                "dropping them")
    time_features: tuple[str, ...] | None = option(None, choices=TIME_FEATURES, nargs="+",
                                                   help="card: time fields to derive (default hour weekday gap; "
                                                   "'timestamp' is the reference's)")
    recency: tuple[str, ...] | None = option(
        None, nargs="+", metavar="FIELD",
        help="card: fields whose time since the card holder last used the same value (over the whole past) "
        "becomes a field of its own (default: Merchant Name, Merchant City, Zip, MCC, Use Chip and hour); "
        "'none' keeps the reference fields only, a history of --seq-len rows")
    seed: int = option(0, help="seed of the split")
    tokenizer: str | None = option(None, metavar="RUN/model",
                                   help="encode with this pre-training run's tokenizer (vocabularies, bins, recency "
                                   "fields) instead of fitting one; unseen values become [UNK] (default: fit one on "
                                   "the training rows)")
    threads: int | None = threads_option(help="threads that fit the fields and derive the recency fields (default 2, "
                                         "or 1 when the machine is busy)")
    device: str = device_option(help="prepare runs on the CPU: auto or cpu (cuda is refused)")

    def check(self) -> None:
        split_fractions(self.fractions)
        if self.device not in ("auto", "cpu"):
            raise TabbertError(f"prepare runs on the CPU; --device {self.device} is not available to it")
        if self.tokenizer is not None:
            object.__setattr__(self, "tokenizer", str(self.tokenizer))
        if self.recency is not None and self.source != "card":
            raise TabbertError(f"--recency applies to --source card; a {self.source} table's recency fields come "
                               "from its schema")
        if self.recency is not None and "none" in self.recency and len(self.recency) > 1:
            raise TabbertError(f"--recency takes 'none' or field names, not both (got {list(self.recency)})")
        if self.recency is not None:  # 'none' is the empty choice
            object.__setattr__(self, "recency", tuple(name for name in self.recency if name != "none"))

    def reader_options(self) -> dict:
        """The options of the source's reader that differ from its defaults."""
        options: dict[str, Any] = {"keep_missing": True} if self.keep_missing else {}
        if self.time_features:
            options["time_features"] = self.time_features
        if self.recency is not None:
            options["recency"] = self.recency
        return options


@dataclass(frozen=True)
class PretrainOptions(Options):
    """Model size, objective and training settings of pre-training."""

    step: ClassVar[str] = "pretrain"

    size: str = option("small", choices=SIZES, aliases=("--model",),
                       help="model size: tiny (tests), small, paper (Padhi et al. 2021); --model is an older name")
    flat: bool = option(False, help="flat TabBERT: one BERT over all field tokens instead of field then row "
                        "transformers")
    objective: str = option("masked", choices=OBJECTIVES,
                            help="masked: predict masked fields from the whole window (BERT); causal: predict "
                            "each next row from the rows up to it (GPT), for one-pass surprise")
    epochs: float = option(1.0, help="training epochs", at_least=0)
    batch_size: int = option(64, help="windows per batch and process", at_least=1)
    lr: float = option(5e-4, help="peak learning rate", above=0)
    max_steps: int = option(-1, help="stop after this many optimizer steps (overrides --epochs when positive)")
    resume: bool = option(False, help="continue the run in --out from its newest checkpoint")
    seed: int = option(0, help="seed of initialization, data order and masks")
    mlm_probability: float = option(0.15, above=0, below=1,
                                    help="share of field tokens (rows with --mask-rows) selected for prediction")
    mask_rows: bool = option(False, help="mask whole rows instead of single fields")
    folds: int = option(1, at_least=1, help="split the training entities into this many folds (for out-of-fold "
                        "surprise and embeddings; see --fold)")
    fold: int | None = option(None, at_least=0, help="with --folds K: leave out the training entities of this fold "
                              "(0 .. K-1)")
    max_eval_windows: int | None = option(None, at_least=1, help="validate on at most this many validation windows, "
                                          "spread evenly over the split (default: every one)")
    save_steps: int = option(500, help="checkpoint every this many steps", at_least=1)
    save_total_limit: int = option(2, help="checkpoints kept", at_least=1)
    bf16: bool = option(False, help="bfloat16 autocast on a CUDA device (ignored on CPU)")
    threads: int | None = threads_option()
    device: str = device_option(help="auto (cuda when available), cpu or cuda; under torchrun each process takes "
                                "its own GPU")
    hidden_size: int | None = option(None, help="width of a row vector", at_least=1, group="size overrides")
    num_hidden_layers: int | None = option(None, help="layers of the row BERT", at_least=1, aliases=("--num-layers",),
                                           group="size overrides")
    num_attention_heads: int | None = option(None, help="attention heads of the row BERT", at_least=1,
                                             aliases=("--num-heads",), group="size overrides")
    intermediate_size: int | None = option(None, help="feed-forward width of the row BERT", at_least=1,
                                           group="size overrides")
    field_hidden: int | None = option(None, help="width of a field embedding", at_least=1, group="size overrides")
    field_num_heads: int | None = option(None, help="attention heads of the field transformer", at_least=1,
                                         aliases=("--field-heads",), group="size overrides")
    overrides: dict[str, Any] = option({}, cli=False, help="further TabBertConfig settings that change the size")

    def check(self) -> None:
        if self.max_steps <= 0 and self.epochs <= 0:
            raise TabbertError("give a positive number of epochs or of --max-steps")
        if (self.folds > 1) != (self.fold is not None) or self.fold is not None and self.fold >= self.folds:
            raise TabbertError(f"--fold chooses one of the --folds (0 .. folds-1) and needs folds > 1; "
                               f"got folds={self.folds}, fold={self.fold}")
        if self.device.startswith("cuda:"):
            raise TabbertError("pretrain takes device auto, cpu or cuda; choose its GPUs with CUDA_VISIBLE_DEVICES")
        if self.objective == "causal" and self.flat:
            raise TabbertError("--objective causal needs the hierarchical model; drop --flat")
        if self.objective == "causal" and self.mask_rows:
            raise TabbertError("--mask-rows belongs to --objective masked; the causal objective masks nothing")

    def model_overrides(self) -> dict[str, Any]:
        """The configuration values that change the named size."""
        named = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "field_hidden",
                 "field_num_heads")
        return {**{name: getattr(self, name) for name in named if getattr(self, name) is not None}, **self.overrides}


@dataclass(frozen=True)
class FinetuneOptions(Options):
    """A head on the pre-trained encoder (or on raw field embeddings) and how it is trained.

    ``task``, ``loss``, ``imbalance`` and ``metric`` default to what the dataset's task calls
    for; :meth:`for_task` fills them in and checks the options that depend on the task.
    """

    step: ClassVar[str] = "finetune"

    pretrained: str | None = option(None, help="pre-training run, RUN or RUN/model (needed unless --encoder raw)")
    encoder: str = option("pretrained", choices=ENCODERS, group="model",
                          help="the pre-trained TabBERT, or field embeddings trained from scratch (baseline)")
    head: str = option("lstm", choices=HEADS, group="model",
                       help="LSTM over the rows, read at the last row (the reference recipe), or MLP on the mean row")
    size: str = option("small", choices=SIZES, group="model",
                       help="with --encoder raw: embedding and row widths of that model size")
    unfreeze: bool = option(False, group="model", help="train the pre-trained encoder too, at --encoder-lr "
                            "decayed by --layer-decay per layer below the top (default: frozen)")
    surprise_input: bool = option(False, group="model",
                                  help="the head also reads each row's surprise under the pre-training run's "
                                  "field heads, given the rows before it (a causal run: every row; a masked "
                                  "run: the newest row, masked whole, in a second forward)")
    points: str | None = option(None, choices=POINT_KINDS, group="task",
                                help="prediction points: every row scored from its history (default for "
                                "classification), or the newest rows of the stride windows (the paper; default "
                                "for regression)")
    context: int | None = option(None, at_least=1, group="task",
                                 help="rows of history per prediction point (default: the dataset's --seq-len; "
                                 "at most the pre-trained encoder's rows)")
    task: str | None = option(None, choices=TASKS, group="task", help="default: the dataset's task")
    label_mode: str | None = option(None, choices=LABEL_MODES, aliases=("--label",), group="task",
                                    help="classification: a point is positive when its last row is (default with "
                                    "--points rows) or when any row of its history is (default with --points windows)")
    target_mode: str = option("last", choices=TARGET_MODES, aliases=("--target",), group="task",
                              help="regression: predict the last row's targets or every row's")
    loss: str | None = option(None, choices=("ce", "rmse", "mse"), group="task",
                              help="classification: ce (default) or rmse between softmax and one-hot; "
                              "regression: mse (default) or rmse, on standardized targets")
    imbalance: str | None = option(None, choices=IMBALANCE, group="task",
                                   help="classification: repeat positive points (default with --points windows), "
                                   "weigh the loss, or nothing (default with --points rows)")
    negative_rate: float | None = option(None, above=0, group="task",
                                         help="share of the negative training points kept, drawn once with --seed "
                                         "(default: 0.1 with --points rows, else 1); scores then overstate the "
                                         "positive rate, while rankings and the validation threshold hold")
    label_fraction: float = option(1.0, above=0, group="task",
                                   help="train on the labels of this seeded share of the training entities only "
                                   "(label-budget experiments)")
    upsample_ratio: float = option(0.5, above=0, below=1, group="task",
                                   help="share of positive windows in an upsampled epoch")
    metric: str | None = option(None, group="task",
                                help="validation figure that picks the best epoch: pr_auc (default), roc_auc, f1, "
                                "precision, recall, recall_at_1pct_fpr or loss; regression: rmse (default), mae, "
                                "rmse_<target>, mae_<target> or loss")
    epochs: int = option(10, help="most epochs", at_least=1, group="training")
    patience: int = option(3, at_least=1, group="training",
                           help="stop after this many epochs without a better validation figure")
    batch_size: int = option(64, help="windows per batch", at_least=1, group="training")
    grad_accum: int = option(1, help="batches per optimizer step", at_least=1, group="training")
    lr: float = option(1e-3, help="learning rate of the head", above=0, group="training")
    encoder_lr: float = option(5e-5, help="learning rate of the encoder with --unfreeze", above=0, group="training")
    layer_decay: float = option(0.8, above=0, group="training",
                                help="with --unfreeze: each encoder layer below the top learns at this factor of "
                                "the one above (layer-wise learning-rate decay)")
    weight_decay: float = option(0.01, help="AdamW weight decay", at_least=0, group="training")
    warmup_ratio: float = option(0.1, at_least=0, below=1, group="training",
                                 help="share of the steps with a linear warm-up before the cosine decay")
    max_grad_norm: float = option(1.0, help="gradient clipping norm", above=0, group="training")
    threads: int | None = threads_option(group="training")
    device: str = device_option(group="training")
    seed: int = option(0, help="random seed", group="training")

    def check(self) -> None:
        if isinstance(self.epochs, float) and not self.epochs.is_integer():
            raise TabbertError(f"epochs must be a whole number, got {self.epochs}")
        object.__setattr__(self, "epochs", int(self.epochs))
        if self.encoder == "pretrained" and self.pretrained is None:
            raise TabbertError("a pre-trained encoder needs --pretrained RUN/model (or use --encoder raw)")
        for name in ("negative_rate", "label_fraction"):
            if (getattr(self, name) or 0) > 1:
                raise TabbertError(f"{name} is a share, at most 1; got {getattr(self, name)}")
        if self.encoder == "raw" and self.pretrained is not None:
            raise TabbertError("--encoder raw trains field embeddings from scratch and takes no --pretrained")
        if self.encoder == "raw" and self.surprise_input:
            raise TabbertError("--surprise-input reads a pre-training run's field heads; --encoder raw has none")
        if self.pretrained is not None:
            object.__setattr__(self, "pretrained", str(self.pretrained))

    def for_task(self, task: str, target_names: tuple[str, ...] = ()) -> FinetuneOptions:
        """These options for a dataset of ``task``: defaults filled in, options of the other task set to
        None, and the choices that depend on the task checked."""
        if self.task not in (None, task):
            raise TabbertError(f"a {task} dataset cannot be fine-tuned for {self.task}")
        classification = task == "classification"
        points = self.points or ("rows" if classification else "windows")
        imbalance = self.imbalance or ("upsample" if classification and points == "windows" else "none")
        resolved = dataclasses.replace(
            self, task=task, loss=self.loss or LOSSES[task][0], imbalance=imbalance,
            metric=self.metric or ("pr_auc" if classification else "rmse"),
            size=self.size if self.encoder == "raw" else None,
            encoder_lr=self.encoder_lr if self.unfreeze and self.encoder == "pretrained" else None,
            upsample_ratio=self.upsample_ratio if imbalance == "upsample" else None,
            label_mode=(self.label_mode or ("last" if points == "rows" else "any")) if classification else None,
            points=points,
            negative_rate=(self.negative_rate or (0.1 if points == "rows" else 1.0)) if classification else None,
            layer_decay=self.layer_decay if self.unfreeze and self.encoder == "pretrained" else None,
            target_mode=None if classification else self.target_mode,
        )
        metrics = ("loss", *CLASSIFICATION_METRICS) if classification else (
            "loss", "rmse", "mae", *(f"{kind}_{name}" for kind in ("rmse", "mae") for name in target_names))
        for name, allowed in (("loss", LOSSES[task]), ("metric", metrics)):
            if getattr(resolved, name) not in allowed:
                raise TabbertError(f"{name} must be one of {allowed} for {task}, got {getattr(resolved, name)!r}")
        if not classification and resolved.imbalance != "none":
            raise TabbertError("class imbalance handling applies to classification only")
        return resolved


def _number_or_balanced(text: str) -> float | str:
    """A command-line weight: a number, or the word ``balanced``."""
    if text == "balanced":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'balanced', got {text!r}") from None


def _finetune_default(name: str) -> Any:
    return FinetuneOptions.__dataclass_fields__[name].default


@dataclass(frozen=True)
class BaselineOptions(Options):
    """The models TabBERT is compared with: LightGBM on window aggregates, or an LSTM or MLP head on
    raw field embeddings (fine-tuning with ``encoder="raw"``)."""

    step: ClassVar[str] = "baseline"

    kind: str = option(help="which baseline to train", choices=BASELINE_KINDS)
    points: str | None = option(None, choices=POINT_KINDS,
                                help="prediction points: every row from its history (default), or the newest rows "
                                "of the stride windows (the paper)")
    label_mode: str | None = option(None, choices=LABEL_MODES, aliases=("--label",),
                                    help="a point's label: its last row's (default with --points rows) or 1 when any "
                                    "row of its history is positive (default with --points windows)")
    context: int | None = option(None, at_least=1, help="rows of history per point (default: the dataset's --seq-len)")
    seed: int = option(0, help="random seed")
    lr: float | None = option(None, above=0, aliases=("--learning-rate",),
                              help="learning rate (default 0.05 for lightgbm, the fine-tuning default otherwise)")
    features: str = option("history", choices=LIGHTGBM_FEATURES, group="lightgbm",
                           help="history: one example per row, scored from its entity's causal history (counts and "
                           "sums over the last hour/day/week, values against the entity's earlier ones, whether "
                           "it used this raw value before); window: aggregates of the paper's windows")
    negative_rate: float = option(0.1, above=0,
                                  help="with rows as prediction points: share of the negative training rows kept "
                                  "(seeded; lightgbm weighs the kept ones 1/rate, so its scores stay probability "
                                  "estimates). Evaluation uses every row")
    label_fraction: float = option(1.0, above=0,
                                   help="share of the training entities (seeded) whose rows are labelled training "
                                   "examples, for label-budget experiments")
    embeddings: str | None = option(None, group="lightgbm", metavar="RUN/model",
                                    help="history: append the pre-trained TabBERT encoder's output at each row "
                                    "(last position of its padded causal history). A model pre-trained on the "
                                    "same training entities makes these in-sample features: mind the protocol")
    surprise: tuple[str, ...] | None = option(None, group="lightgbm", metavar="RUN/model", nargs="+",
                                              help="history: append each row's surprise (total and per field) and "
                                              "the expectation that scored it, under these pre-training runs: one, "
                                              "or one per fold of `pretrain --folds K` (causal runs give next-row "
                                              "surprise, one forward per window). Training rows are scored out of "
                                              "fold; rows of entities no run pre-trained on, and `predict`'s raw "
                                              "rows, by the mean of the runs")
    surprise_only: bool = option(False, group="lightgbm",
                                 help="with --surprise: the surprise columns only, without the expectation (fewer "
                                 "features for few labels)")
    surprise_features: str | None = option(None, cli=False, group="lightgbm",
                                           help="the matrix `row_surprise(surprise, data, embeddings=True)` gave, "
                                           "as a .npy, when already computed")
    extra_features: str | None = option(None, group="lightgbm", metavar="FILE.npy",
                                        help="history: append a float32 [n_rows, k] array aligned with the prepared "
                                        "rows (e.g. anomaly scores); in-sample when fitted on the training rows")
    rounds: int = option(2000, help="most boosting rounds", at_least=1, group="lightgbm")
    early_stopping: int = option(100, at_least=1, group="lightgbm",
                                 help="stop after this many rounds without a better validation score")
    num_leaves: int = option(31, help="leaves per tree", at_least=2, group="lightgbm")
    min_data_in_leaf: int = option(20, help="fewest windows in a leaf", at_least=1, group="lightgbm")
    scale_pos_weight: float | str = option(1.0, type=_number_or_balanced, group="lightgbm",
                                           help="weight of positive windows: a number, or 'balanced' for "
                                           "negatives/positives")
    plots: bool = option(True, cli=False, help="draw the PR and ROC curves")
    epochs: int = option(_finetune_default("epochs"), help="most epochs", at_least=1, group="lstm and mlp")
    batch_size: int = option(_finetune_default("batch_size"), help="windows per batch", at_least=1,
                             group="lstm and mlp")
    size: str = option(_finetune_default("size"), choices=SIZES, group="lstm and mlp",
                       help="embedding and row widths of that model size")
    threads: int | None = threads_option(help="CPU threads; LightGBM's results do not depend on them (default: all "
                                         "cores, or the cores left free when the machine is busy)")
    device: str = device_option(group="lstm and mlp")

    LIGHTGBM_LEARNING_RATE: ClassVar[float] = 0.05

    def check(self) -> None:
        weight = self.scale_pos_weight
        if isinstance(weight, str) and weight != "balanced" or not isinstance(weight, str) and not weight > 0:
            raise TabbertError(f"scale_pos_weight must be a positive number or 'balanced', got {weight!r}")
        for name in ("negative_rate", "label_fraction"):
            if getattr(self, name) > 1:
                raise TabbertError(f"{name} must be at most 1, got {getattr(self, name)}")
        if self.features == "window" and (self.embeddings or self.extra_features or self.surprise
                                          or self.label_fraction < 1):
            raise TabbertError("--embeddings, --surprise, --extra-features and --label-fraction apply to --features "
                               "history")
        if (self.surprise_features or self.surprise_only) and not self.surprise:
            raise TabbertError("--surprise-only and surprise_features take the --surprise runs: give those runs")

    def to_dict(self) -> dict:
        """The options that apply to this kind of baseline."""
        other = "lstm and mlp" if self.kind == "lightgbm" else "lightgbm"
        unused = {"plots"} if self.kind != "lightgbm" else set()
        if self.kind == "lightgbm":
            unused |= {"negative_rate", "label_fraction", "embeddings", "extra_features", "surprise",
                       "surprise_only", "surprise_features"} \
                if self.features == "window" else {"label_mode"}
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)
                if item.metadata.get("group") != other and item.name not in unused}

    @property
    def learning_rate(self) -> float:
        """LightGBM's learning rate."""
        return self.LIGHTGBM_LEARNING_RATE if self.lr is None else self.lr

    def finetune_options(self) -> FinetuneOptions:
        """The fine-tuning that trains the ``lstm`` or ``mlp`` baseline."""
        settings = dict(encoder="raw", head=self.kind, points=self.points, label_mode=self.label_mode,
                        context=self.context, label_fraction=self.label_fraction,
                        negative_rate=None if self.points == "windows" else self.negative_rate,
                        seed=self.seed, epochs=self.epochs, batch_size=self.batch_size, size=self.size,
                        threads=self.threads, device=self.device)
        return FinetuneOptions.create(**settings, **({} if self.lr is None else {"lr": self.lr}))
