"""Label efficiency: what pretraining is worth at 1 %, 10 % and 100 % of the labels.

Each label budget and seed draws one stratified subset of the labelled training set
(`label_subset`); every protocol and both encoders train on exactly that subset, so a margin
compares like with like. The two encoders are the pretrained one and its from-scratch baseline:

- `linear` (and `knn`): a probe on frozen features of the pretrained encoder, and of the same
  ViT with random weights, initialised from the seed as the scratch fine-tune is.
- `finetune`: the pretrained encoder fine-tuned with MAE's recipe (see `finetune.py`), and the
  same ViT (model, input size, patch size) trained from random weights with the same recipe.

A budget below all labels runs seeds 0 .. n_seeds - 1; all labels run seed 0 alone (the subset
is then the whole set). Each result goes to `eval/efficiency.json` the moment it is finished,
and a later run with the same settings skips the results it finds there.
"""

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from sslvit.data import Subset, label_subset, parse_label_spec
from sslvit.evaluate.classify import _n_classes, evaluate_features
from sslvit.evaluate.efficiency_report import (
    ENCODERS,
    display_rows,
    efficiency_figure,
    markdown_table,
    summarize,
)
from sslvit.evaluate.features import encoder_transform, extract_features
from sslvit.evaluate.finetune import FinetuneConfig, Finetuner
from sslvit.evaluate.finetune import _check as check_finetune
from sslvit.evaluate.report import write_text_atomic
from sslvit.models.io import load_encoder, resolve_encoder_path
from sslvit.train.distributed import resolve_device

log = logging.getLogger("sslvit")

PROTOCOLS = ("knn", "linear", "finetune")
DEFAULT_BUDGETS = ("1%", "10%", "100%")
# fine-tuning settings outside the recipe: set per result, taken from the encoder, or changing
# how a run executes rather than what it learns
_NOT_RECIPE = (
    "labels",
    "seed",
    "model",
    "patch_size",
    "device",
    "workers",
    "eval_every",
    "log_every",
)


@dataclasses.dataclass
class EfficiencyConfig:
    """Settings of a label-efficiency study.

    Attributes:
        budgets: Label budgets, anything `parse_label_spec` reads ("1%", "0.1", "5" per class).
        n_seeds: Seeds per budget below all labels (all labels run one).
        protocols: Some of "knn", "linear", "finetune".
        finetune: The fine-tuning recipe for both encoders; its `labels` and `seed` are set per
            result, and for the scratch encoder its `model` and `patch_size` are the encoder's.
        pool: Feature pooling of the probes, "cls" or "mean"; None for the encoder's.
        device: Where the probes' features are computed ("auto": CUDA when present).
        batch_size: Images per forward pass of feature extraction.
    """

    budgets: tuple[str, ...] = DEFAULT_BUDGETS
    n_seeds: int = 3
    protocols: tuple[str, ...] = ("linear", "finetune")
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    pool: str | None = None
    device: str = "auto"
    batch_size: int = 256

    def __post_init__(self):
        _check(self)


def budget_name(spec) -> str:
    """The canonical text of a label budget: "10%", "100%", or "5" for 5 per class."""
    spec = parse_label_spec(spec)
    if spec.per_class is not None:
        return str(spec.per_class)
    return f"{100 * (spec.fraction or 1.0):g}%"


def budget_seeds(budget: str, n_seeds: int) -> list[int]:
    """Seeds of a budget: 0 .. n_seeds - 1, or only 0 when the budget is every label."""
    spec = parse_label_spec(budget)
    return [0] if spec.fraction is None and spec.per_class is None else list(range(n_seeds))


def subset_digest(names) -> str:
    """A short fingerprint of the training images a result used (their names, in order)."""
    return hashlib.sha256("\n".join(map(str, names)).encode()).hexdigest()[:16]


def _check(config: EfficiencyConfig) -> None:
    """Fail before any work on a setting outside its range, naming the option."""
    if not config.budgets:
        raise ValueError("--fractions: give at least one label budget, e.g. 1%,10%,100%")
    for budget in config.budgets:
        parse_label_spec(budget)
    if config.n_seeds < 1:
        raise ValueError(f"--seeds {config.n_seeds}: need at least 1")
    unknown = [p for p in config.protocols if p not in PROTOCOLS]
    if unknown or not config.protocols:
        raise ValueError(
            f"--protocols {','.join(config.protocols)}: choose from {', '.join(PROTOCOLS)}"
        )
    check_finetune(config.finetune)


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _slug(budget: str) -> str:
    return budget.replace("%", "pct").replace(".", "p")


class LabelEfficiency:
    """One label-efficiency study; `run()` fills in the results that are missing.

    Writes into `out`: `eval/efficiency.json` (settings, every result, and the summary once all
    are in), `eval/efficiency.md` (the table) and `figures/efficiency.png`. Each fine-tune runs
    in `eval/efficiency/finetune-ENCODER-BUDGET-seedS/` (its settings, metrics and confusion
    matrix); its checkpoints are deleted once its result is saved.

    Args:
        encoder: Run folder or `.safetensors` file of the pretrained encoder.
        train_images: The labelled training set every budget is drawn from.
        test_images: A labelled test set with the same classes.
        out: Folder of the study (normally the encoder's run folder).
        config: The settings.
        data: What the data is, for the record (e.g. folder names, held-out fraction); a
            later run must describe the same data to reuse results.

    Raises:
        ValueError: Bad settings, images the encoder cannot take, or an `efficiency.json` in
            `out` that holds results of other settings.
    """

    def __init__(
        self, encoder, train_images, test_images, out, config: EfficiencyConfig, data=None
    ):
        self.config = config
        self.budgets = list(dict.fromkeys(budget_name(b) for b in config.budgets))
        self.weights = resolve_encoder_path(encoder)
        self.device = resolve_device(config.device)
        self.encoder, self.info = load_encoder(self.weights, self.device)
        self.pool = config.pool or self.info.pool
        for role, images in (("training", train_images), ("test", test_images)):
            encoder_transform(self.info, images.in_chans, f"the {role}")  # fail before any work
        self.n_classes = _n_classes(train_images, test_images)
        self.train_images, self.test_images = train_images, test_images
        self.out = Path(out)
        self.path = self.out / "eval" / "efficiency.json"
        self.settings = self._settings(data)
        self.results = self._load()
        self._features = {}
        if self.info.pool != "cls" and "finetune" in config.protocols:
            log.warning(
                "the encoder pools by %r, the scratch fine-tune by 'cls' (the default)",
                self.info.pool,
            )

    def _settings(self, data) -> dict:
        recipe = dataclasses.asdict(self.config.finetune)
        settings = {
            "encoder": str(self.weights),
            "encoder_sha256": _file_digest(self.weights),
            "data": data,
            "n_pool": len(self.train_images),
            "n_test": len(self.test_images),
            "n_classes": self.n_classes,
            "pool": self.pool,
        }
        if "finetune" in self.config.protocols:
            settings["finetune"] = {k: v for k, v in recipe.items() if k not in _NOT_RECIPE}
        return json.loads(json.dumps(settings))  # tuples as lists, as they come back from disk

    def _load(self) -> dict:
        """Results already in `efficiency.json`, by (protocol, encoder, labels, seed)."""
        if not self.path.is_file():
            return {}
        try:
            saved = json.loads(self.path.read_text())
            settings, results = saved["settings"], saved["results"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{self.path}: not an efficiency result file ({err})") from err
        # the encoder may have moved with its run folder, but its weights must be the same; a
        # recipe is only recorded once a study fine-tunes, and kept when a later one does not
        was, now = _flat(settings), _flat(self.settings)
        differ = [
            f"{k} {was.get(k)} -> {now[k]}"
            for k in now
            if k != "encoder"
            and (k in was or not k.startswith("finetune."))
            and was.get(k) != now[k]
        ]
        if differ:
            raise ValueError(
                f"{self.path}: holds results of other settings ({'; '.join(differ)}); give "
                "another --out or remove the file"
            )
        self.settings = {**settings, **self.settings}
        return {_key(r): r for r in results}

    def cells(self) -> list[tuple[str, str, str, int]]:
        """Every (protocol, encoder, labels, seed) of the study, in the order they run."""
        return [
            (protocol, encoder, budget, seed)
            for protocol in self.config.protocols
            for budget in self.budgets
            for seed in budget_seeds(budget, self.config.n_seeds)
            for encoder in ENCODERS
        ]

    def run(self) -> dict:
        """Run the missing results, then write the table and the figure.

        Returns:
            `results` (every result of this study's cells), `summary` (one row per protocol
            and budget, see `summarize`), and the `paths` written.
        """
        cells = self.cells()
        todo = [cell for cell in cells if cell not in self.results]
        if len(todo) < len(cells):
            log.info(
                "%d of %d results already in %s; running the other %d",
                len(cells) - len(todo),
                len(cells),
                self.path,
                len(todo),
            )
        for i, cell in enumerate(todo):
            start = time.perf_counter()
            protocol, encoder, budget, seed = cell
            if protocol == "finetune":
                scores = self._finetune(encoder, budget, seed)
            else:
                scores = self._probe(protocol, encoder, budget, seed)
            result = {
                "protocol": protocol,
                "encoder": encoder,
                "labels": budget,
                "seed": seed,
                **scores,
                "seconds": round(time.perf_counter() - start, 1),
            }
            self.results[cell] = result
            self._save()
            log.info(
                "efficiency %d/%d: %s %s, %s labels, seed %d: top-1 %.2f %% (%.0f s)",
                i + 1,
                len(todo),
                protocol,
                encoder,
                budget,
                seed,
                result["top1"],
                result["seconds"],
            )
        results = [self.results[cell] for cell in cells]
        summary = summarize(results, self.config.protocols, self.budgets)
        return {"results": results, "summary": summary, "paths": self._report(summary)}

    def _save(self, summary: list[dict] | None = None) -> None:
        document = {"settings": self.settings, "results": list(self.results.values())}
        if summary is not None:
            document["summary"] = summary
        write_text_atomic(self.path, json.dumps(document, indent=2))

    def _subset(self, budget: str, seed: int) -> Subset:
        images = self.train_images
        return Subset(images, label_subset(images.labels, budget, seed, images.classes))

    def _described(self, subset) -> dict:
        return {
            "n_train": len(subset),
            "share": 100.0 * len(subset) / len(self.train_images),
            "subset": subset_digest(subset.names),
        }

    def random_encoder(self, seed: int):
        """The encoder's ViT with random weights, drawn as the scratch fine-tune of `seed`
        draws them (same RNG seed and geometry); the global RNG is left as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.info.build().to(self.device).eval()

    def _features_of(self, encoder: str, seed: int):
        """Train and test features of the pretrained encoder, or of the random one of `seed`."""
        key = "pretrained" if encoder == "pretrained" else f"scratch-{seed}"
        if key not in self._features:
            network = self.encoder if encoder == "pretrained" else self.random_encoder(seed)
            self._features[key] = [
                extract_features(
                    network,
                    images,
                    encoder_transform(self.info, images.in_chans),
                    self.pool,
                    self.config.batch_size,
                    self.device,
                )
                for images in (self.train_images, self.test_images)
            ]
        return self._features[key]

    def _probe(self, protocol: str, encoder: str, budget: str, seed: int) -> dict:
        subset = self._subset(budget, seed)
        (train_feats, train_labels), (test_feats, test_labels) = self._features_of(encoder, seed)
        chosen = torch.as_tensor(subset.indices)
        scores = evaluate_features(
            protocol,
            train_feats[chosen],
            train_labels[chosen],
            test_feats,
            test_labels,
            self.n_classes,
            seed,
        )
        return {**scores, **self._described(subset), "pool": self.pool}

    def _finetune(self, encoder: str, budget: str, seed: int) -> dict:
        folder = self.out / "eval" / "efficiency" / f"finetune-{encoder}-{_slug(budget)}-seed{seed}"
        if folder.exists():
            log.info("%s: left by an unfinished run; starting it again", folder)
            shutil.rmtree(folder)
        config = dataclasses.replace(self.config.finetune, labels=budget, seed=seed)
        if encoder == "scratch":
            info = self.info
            size = config.img_size or info.img_size
            config = dataclasses.replace(
                config, model=info.model, patch_size=info.patch_size, img_size=size
            )
        source = self.weights if encoder == "pretrained" else None
        finetuner = Finetuner(source, self.train_images, self.test_images, folder, config)
        described = self._described(finetuner.train_images)
        result = finetuner.run()
        shutil.rmtree(folder / "checkpoints")  # four copies of the weights; the result is saved
        kept = ("top1", "top5", "best_top1", "best_epoch", "train_loss", "epochs", "lr")
        return {
            **{k: result[k] for k in kept if k in result},
            **described,
            "layer_decay": result["layer_decay"],
            "img_size": result["img_size"],
        }

    def _report(self, summary: list[dict]) -> dict:
        self._save(summary)
        n_test = len(self.test_images)
        caption = (
            f"Top-1 accuracy (%) on {n_test} test images, mean ± sample std over seeds; "
            f"margin = pretrained - scratch. Encoder: {self.weights}."
        )
        table = self.out / "eval" / "efficiency.md"
        write_text_atomic(table, caption + "\n\n" + markdown_table(display_rows(summary)))
        figure = efficiency_figure(
            summary, self.out / "figures" / "efficiency.png", f"top-1 on {n_test} test images"
        )
        return {"json": str(self.path), "table": str(table), "figure": str(figure)}


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level, keys joined by dots: {"finetune.epochs": 100, ...}."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _key(result: dict) -> tuple[str, str, str, int]:
    return (result["protocol"], result["encoder"], result["labels"], result["seed"])


def label_efficiency(encoder, train_images, test_images, out, config=None, data=None) -> dict:
    """Run the study of `LabelEfficiency` (missing results only) and return its `run()`."""
    study = LabelEfficiency(
        encoder, train_images, test_images, out, config or EfficiencyConfig(), data
    )
    return study.run()
