"""The training loop behind ``faceserve train``: P x K batches, online mining or a margin head,
held-out validation each epoch, best/last checkpoints, CSV logs and a plot.

Reproducibility: the model and head are initialised after ``torch.manual_seed(seed)``; the
batches of epoch ``e`` come from ``PKSampler(seed)`` and the augmentation of global step ``g``
from a generator seeded with ``(seed, g)``. Nothing else is random, so the same seed gives the
same first-step loss, and a run resumed from a checkpoint continues exactly where it stopped.

Run directory (``--out``): ``config.json``, ``identities.json`` (train/validation split),
``excluded_identities.txt`` (every identity the run saw: leave them out of any evaluation of
the result), ``steps.csv`` (per step: loss, active-triplet fraction, learning rate),
``epochs.csv`` (per epoch: validation figures), ``curves.png``, ``last.pt``, ``best.pt``,
``summary.json``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.device import resolve_device
from models.training.checkpoint import load_checkpoint, save_checkpoint
from models.training.data import (
    AugmentConfig,
    FaceChips,
    PreparedData,
    augment_batch,
    prepare_chips,
    split_identities,
    to_input,
)
from models.training.distances import get_distance
from models.training.index_utils import all_triplets
from models.training.losses import ArcFaceLoss, CosFaceLoss, TripletMarginLoss
from models.training.miners import get_miner
from models.training.sampler import PKSampler
from models.training.validation import verification_figures

__all__ = ["TrainConfig", "TrainResult", "Trainer", "build_model", "freeze_all_but_last"]

ARCHITECTURES = ("dlib-resnet", "small")
DEFAULT_MARGIN = {"triplet": 0.2, "cosface": 0.35, "arcface": 0.5}
# Triplet margin from the dlib weights: their unit embeddings sit in a narrow cone (held-out
# LFW impostor pairs at cosine ~0.8, genuine ~0.95, i.e. squared distances ~0.4 vs ~0.1), so
# FaceNet's α = 0.2 asks for a different geometry and the fine-tuning rebuilds the space: on
# 158 LFW identities (5 x 100 steps, --freeze) α = 0.2 took held-out TAR@FAR=1e-3 from 0.840
# to 0.854 after one epoch and then down to 0.818, α = 0.05 to 0.894 and still rising.
DLIB_TRIPLET_MARGIN = 0.05


@dataclass
class TrainConfig:
    """Every knob of a run; stored in ``config.json`` and in each checkpoint."""

    data: str
    out: str
    loss: str = "triplet"  # triplet | cosface | arcface
    miner: str = "batch-hard"  # batch-hard | semi-hard | batch-all (triplet loss only)
    margin: float | None = None  # default: see resolved_margin
    distance: str = "squared-l2"  # squared-l2 | cosine (triplet loss only)
    scale: float = 30.0  # logit scale s of the margin heads
    init: str = "dlib"  # dlib | random
    arch: str = "dlib-resnet"  # dlib-resnet | small
    freeze: int | None = None  # train only the last N blocks (None: train everything)
    optimizer: str = "adamw"  # adamw | sgd
    lr: float | None = None  # default: 3e-6 from dlib, 1e-3 from random (x10 for SGD)
    weight_decay: float = 1e-4
    epochs: int = 10
    steps_per_epoch: int = 100
    p: int = 16
    k: int = 4
    warmup: int = 50  # linear warm-up steps, then cosine decay to 1% of lr
    seed: int = 0
    val_fraction: float = 0.2
    val_max_per_identity: int = 20
    max_images_per_identity: int | None = None
    far: float = 1e-3
    best_metric: str = "tar"  # tar | accuracy (tar falls back to accuracy when undefined)
    augment: bool = True
    amp: bool = True  # CUDA only
    device: str = "auto"
    chip_cache: str | None = None
    eval_batch_size: int = 64
    progress: bool = True

    def resolved_margin(self) -> float:
        """``DEFAULT_MARGIN`` per loss; for the triplet loss from the dlib weights
        ``DLIB_TRIPLET_MARGIN``. Triplet margins are on the squared-L2 scale and halved for
        the cosine distance (``‖x − y‖² = 2 − 2·cos``), so both mean the same."""
        if self.margin is not None:
            return self.margin
        if self.loss != "triplet":
            return DEFAULT_MARGIN[self.loss]
        margin = DLIB_TRIPLET_MARGIN if self.init == "dlib" else DEFAULT_MARGIN["triplet"]
        return margin / 2 if self.distance == "cosine" else margin

    def resolved_lr(self) -> float:
        """The peak learning rate. From the dlib weights it is tiny on purpose: dlib's batch
        norm is folded into per-channel affine layers with scales of 5-15, so its convolution
        weights are ~1e-3 in size, and an AdamW step of 1e-4 moves each weight by ~10% of
        itself. In the setting of tests/models/training/test_train_real_faces.py, 1e-4 cut
        TAR@FAR=1e-3 on held-out LFW people from 0.90 to 0.77 within 40 steps (SGD at 1e-3:
        0.72); AdamW at 3e-6 and SGD at 3e-5 keep it at 0.90."""
        if self.lr is not None:
            return self.lr
        base = 3e-6 if self.init == "dlib" else 1e-3
        return base * (10 if self.optimizer == "sgd" else 1)

    def validate(self) -> None:
        choices = {
            "loss": ("triplet", "cosface", "arcface"),
            "miner": ("batch-hard", "semi-hard", "batch-all"),
            "distance": ("squared-l2", "cosine"),
            "init": ("dlib", "random"),
            "arch": ARCHITECTURES,
            "optimizer": ("adamw", "sgd"),
            "best_metric": ("tar", "accuracy"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.arch == "small" and self.init == "dlib":
            raise ValueError("--init dlib needs --arch dlib-resnet (the small net has no weights)")
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError("--epochs and --steps-per-epoch must be at least 1")
        if self.freeze is not None and self.freeze < 1:
            raise ValueError("--freeze N keeps the last N blocks trainable; N must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("--val-fraction must be in [0, 1)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainResult:
    out: Path
    interrupted: bool
    global_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    first_loss: float | None = None


# --------------------------------------------------------------------------- model helpers


def build_model(arch: str, init: str, device: torch.device) -> nn.Module:
    """The network to train, on ``device``; ``init="dlib"`` loads the converted dlib weights."""
    if arch == "small":
        from models.training.small_net import small_net

        return small_net().to(device)
    if arch == "dlib-resnet":
        if init == "dlib":
            from models.embedder import load_embedder

            # Unfolded: the affine layers stay separate frozen buffers and the convolutions
            # keep dlib's own weights, so the exported state dict is the plain architecture.
            return load_embedder(device=device, fold=False)
        from models.embedder import DlibResNet

        return DlibResNet().to(device)
    raise ValueError(f"unknown architecture {arch!r}")


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The network's units for freezing, input to output.

    A model may say what its blocks are (``blocks()``); otherwise its top-level children
    that hold parameters, in registration order, are the blocks.
    """
    blocks = getattr(model, "blocks", None)
    if callable(blocks):
        return list(blocks())
    return [m for m in model.children() if any(True for _ in m.parameters())]


def freeze_all_but_last(model: nn.Module, n: int) -> list[nn.Module]:
    """Freeze every parameter except those of the last ``n`` blocks; returns the frozen blocks
    (the trainer keeps them in eval mode so frozen batch-norm statistics stay put).

    A final linear projection listed as a block of its own (DlibResNet's ``fc``) is the
    embedding layer, not a block: it always trains and does not count in ``n``, so
    ``--freeze 1`` trains the last residual block plus the projection.
    """
    blocks = model_blocks(model)
    if blocks and isinstance(blocks[-1], nn.Linear):
        blocks = blocks[:-1]
    if n >= len(blocks):
        return []
    frozen = blocks[: len(blocks) - n]
    for param in model.parameters():
        param.requires_grad_(True)
    for block in frozen:
        for param in block.parameters():
            param.requires_grad_(False)
    return frozen


def embed_chips_eval(
    model: nn.Module,
    chips: np.ndarray,
    device: torch.device,
    batch_size: int = 64,
    amp: bool = False,
) -> torch.Tensor:
    """Embeddings (N, D) float32 on the CPU of uint8 chips, with the model in eval mode
    (``amp``: float16 autocast, CUDA only, as in training)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad(), _autocast(device, enabled=amp):
            for i in range(0, len(chips), batch_size):
                x = to_input(chips[i : i + batch_size], device)
                out.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 128)


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.01) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 down to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """One training run. ``run()`` returns when the epochs are done or on Ctrl-C."""

    STEP_FIELDS = (
        "epoch", "step", "lr", "loss", "active_fraction", "batch_active_fraction", "items",
        "active", "train_accuracy", "seconds",
    )  # fmt: skip
    EPOCH_FIELDS = (
        "epoch", "step", "val_accuracy", "val_threshold", "val_tar", "val_far",
        "val_tar_threshold", "genuine_pairs", "impostor_pairs", "train_loss",
        "train_active_fraction", "seconds", "best",
    )  # fmt: skip

    def __init__(
        self,
        config: TrainConfig,
        resume: bool = False,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        prepared: PreparedData | None = None,
        pipeline_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.out = Path(config.out)
        if resume:
            ckpt = load_checkpoint(self.out / "last.pt")
            saved = TrainConfig.from_dict(ckpt["config"])
            # The run's identity comes from the checkpoint; only the length, the device and
            # the display may change on resume.
            saved.epochs = max(saved.epochs, config.epochs)
            saved.device, saved.progress = config.device, config.progress
            config = saved
            self._resume_state: dict[str, Any] | None = ckpt
        else:
            self._resume_state = None
        config.validate()
        self.config = config
        self.on_step = on_step
        self.device = resolve_device(config.device)
        self.use_amp = config.amp and self.device.type == "cuda"
        self._stop_requested = False

        from models.weights import default_cache_dir

        cache = Path(config.chip_cache) if config.chip_cache else default_cache_dir() / "chips"
        self.prepared = prepared or prepare_chips(
            config.data,
            cache,
            pipeline_factory=pipeline_factory,
            progress=config.progress,
            max_images_per_identity=config.max_images_per_identity,
            seed=config.seed,
        )
        all_chips = self.prepared.chips
        train_names, val_names = split_identities(
            all_chips.names, config.val_fraction, config.seed, all_chips.counts()
        )
        if self._resume_state is not None:
            saved_train = self._resume_state["data"]["train_identities"]
            if saved_train != train_names:
                raise ValueError(
                    "the data folder no longer gives the training identities of the checkpoint; "
                    "resume needs the same data (and seed)"
                )
        self.train_data: FaceChips = all_chips.select(train_names)
        self.val_data: FaceChips = all_chips.select(
            val_names, max_per_identity=config.val_max_per_identity, seed=config.seed
        )
        self.sampler = PKSampler(self.train_data.labels, config.p, config.k, seed=config.seed)

        torch.manual_seed(config.seed)
        self.model = build_model(config.arch, config.init, self.device)
        self.frozen = (
            freeze_all_but_last(self.model, config.freeze) if config.freeze is not None else []
        )
        self.embedding_size = int(getattr(self.model, "embedding_size", 128))
        margin = config.resolved_margin()
        self.head: nn.Module | None = None
        if config.loss == "triplet":
            distance = get_distance(config.distance)
            self.loss_fn: nn.Module = TripletMarginLoss(margin=margin, distance=distance)
            self.miner = get_miner(config.miner, margin, distance)
        else:
            head_cls = CosFaceLoss if config.loss == "cosface" else ArcFaceLoss
            self.head = head_cls(
                self.embedding_size, len(train_names), scale=config.scale, margin=margin
            ).to(self.device)
            self.loss_fn = self.head
            self.miner = None

        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.head is not None:
            params += list(self.head.parameters())
        self.n_trainable = sum(p.numel() for p in params)
        lr = config.resolved_lr()
        if config.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                params, lr=lr, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
            )
        self.total_steps = config.epochs * config.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config.warmup, self.total_steps)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        self.epoch = 1  # the epoch being (or about to be) trained, 1-based
        self.step_in_epoch = 0  # steps of that epoch already done
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self._epoch_losses: list[float] = []
        self._epoch_active: list[float] = []
        self._step_log: list[dict[str, float]] = []
        if self._resume_state is not None:
            self._load_state(self._resume_state)

    # ------------------------------------------------------------------ state

    def data_summary(self) -> dict[str, Any]:
        return {
            "source": str(Path(self.config.data).resolve()),
            **self.prepared.summary(),
            "train_identities": list(self.train_data.names),
            "train_images": len(self.train_data),
            "val_identities": list(self.val_data.names),
            "val_images": len(self.val_data),
        }

    def _state(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "model": {
                "arch": self.config.arch,
                "embedding_size": self.embedding_size,
                "state_dict": self.model.state_dict(),
            },
            "head": None if self.head is None else self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "history": self.history,
            "data": self.data_summary(),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"]["state_dict"])
        if self.head is not None and ckpt.get("head") is not None:
            self.head.load_state_dict(ckpt["head"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        # (The schedule's lambda was built from this config, so a run lengthened on resume
        # decays over its new total.)
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.step_in_epoch = int(ckpt["step_in_epoch"])
        self.global_step = int(ckpt["global_step"])
        self.best = dict(ckpt.get("best") or {})
        self.history = list(ckpt.get("history") or [])

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, Any]:
        emb = embed_chips_eval(
            self.model, self.val_data.chips, self.device, self.config.eval_batch_size,
            amp=self.use_amp,
        )
        res = verification_figures(emb, self.val_data.labels, far=self.config.far)
        return {
            "val_accuracy": res.accuracy,
            "val_threshold": res.threshold,
            "val_tar": res.tar,
            "val_far": res.far,
            "val_tar_threshold": res.tar_threshold,
            "genuine_pairs": res.genuine_pairs,
            "impostor_pairs": res.impostor_pairs,
        }

    def _score(self, row: dict[str, Any]) -> float:
        """The figure that picks the best checkpoint (higher is better)."""
        if self.config.best_metric == "tar" and not math.isnan(row["val_tar"]):
            # Ties on TAR (common with few genuine pairs) are broken by accuracy.
            return row["val_tar"] + 1e-6 * row["val_accuracy"]
        return row["val_accuracy"]

    def _record_epoch(self, epoch: int, seconds: float) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": epoch, "step": self.global_step}
        row.update(self.evaluate())
        row["train_loss"] = float(np.mean(self._epoch_losses)) if self._epoch_losses else ""
        row["train_active_fraction"] = (
            float(np.mean(self._epoch_active)) if self._epoch_active else ""
        )
        row["seconds"] = round(seconds, 2)
        score = self._score(row)
        row["best"] = not self.best or score > self.best["score"]
        self.history.append(row)
        self._append_csv("epochs.csv", self.EPOCH_FIELDS, row)
        if row["best"]:
            self.best = {"score": score, "epoch": epoch, "step": self.global_step, **row}
        return row

    # ------------------------------------------------------------------ files

    def _append_csv(self, name: str, columns: tuple[str, ...], row: dict[str, Any]) -> None:
        path = self.out / name
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})

    def _flush_steps(self) -> None:
        if not self._step_log:
            return
        path = self.out / "steps.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.STEP_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            for row in self._step_log:
                writer.writerow({k: _fmt(row.get(k, "")) for k in self.STEP_FIELDS})
        self._step_log.clear()

    def _truncate_logs_for_resume(self) -> None:
        """Drop log rows written after the checkpoint (a crash between save and exit)."""
        for name, key in (("steps.csv", "step"), ("epochs.csv", "step")):
            path = self.out / name
            if not path.exists():
                continue
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
                columns = rows[0].keys() if rows else None
            limit = self.global_step
            keep = [r for r in rows if int(r[key]) <= limit]
            if name == "epochs.csv":
                done = {int(h["epoch"]) for h in self.history}
                keep = [r for r in keep if int(r["epoch"]) in done]
            if columns is None:
                continue
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(columns))
                writer.writeheader()
                writer.writerows(keep)

    def _reload_epoch_losses(self) -> None:
        """Steps of the current epoch done before the interruption count in its mean loss."""
        path = self.out / "steps.csv"
        if not path.exists():
            return
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if int(row["epoch"]) == self.epoch:
                    self._epoch_losses.append(float(row["loss"]))
                    self._epoch_active.append(float(row["active_fraction"]))

    def _write_run_files(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        config = asdict(self.config)
        config["resolved"] = {
            "margin": self.config.resolved_margin(),
            "lr": self.config.resolved_lr(),
            "device": str(self.device),
            "amp": self.use_amp,
            "trainable_parameters": self.n_trainable,
            "total_steps": self.total_steps,
        }
        _write_json(self.out / "config.json", config)
        summary = self.data_summary()
        _write_json(
            self.out / "identities.json",
            {
                "train": summary["train_identities"],
                "validation": summary["val_identities"],
                "no_face": self.prepared.no_face,
                "unreadable": self.prepared.unreadable,
            },
        )
        used = sorted(set(summary["train_identities"]) | set(summary["val_identities"]))
        (self.out / "excluded_identities.txt").write_text(
            "# Identities seen by this run (training or model selection). Leave them out of\n"
            "# any evaluation of the resulting model, e.g. drop every LFW pair naming one.\n"
            + "".join(f"{n}\n" for n in used)
        )

    def plot(self) -> Path | None:
        from models.training.plots import plot_run

        try:
            return plot_run(self.out)
        except Exception as exc:  # a plot is never worth failing a run for
            print(f"warning: could not draw curves.png: {exc}")
            return None

    # ------------------------------------------------------------------ training

    def _train_mode(self) -> None:
        self.model.train()
        for block in self.frozen:
            block.eval()
        if self.head is not None:
            self.head.train()

    def train_step(self, batch: np.ndarray) -> dict[str, float]:
        cfg = self.config
        chips = self.train_data.chips[batch]
        labels = torch.as_tensor(self.train_data.labels[batch], device=self.device)
        if cfg.augment:
            gen = torch.Generator().manual_seed(
                int(np.random.SeedSequence([cfg.seed, self.global_step]).generate_state(1)[0])
            )
            x = augment_batch(chips, gen, AugmentConfig(), self.device)
        else:
            x = to_input(chips, self.device)
        self._train_mode()
        with _autocast(self.device, self.use_amp):
            emb = self.model(x)
        emb = emb.float()
        if self.miner is not None:
            out = self.loss_fn(emb, labels, self.miner(emb, labels))
            with torch.no_grad():
                # Miner-independent progress: the share of *all* valid triplets of the batch
                # that still violate the margin (mined triplets are active almost by design).
                every = self.loss_fn.per_triplet(emb.detach(), all_triplets(labels))
                out.stats["batch_active_fraction"] = (
                    float((every > 0).float().mean()) if every.numel() else 0.0
                )
        else:
            out = self.loss_fn(emb, labels)
        self.optimizer.zero_grad(set_to_none=True)
        if out.loss.requires_grad:
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        stats = {"loss": float(out.loss.detach()), "lr": lr, **out.stats}
        return stats

    def _batches(self) -> Iterator[np.ndarray]:
        yield from self.sampler.iter_epoch(
            self.epoch, self.config.steps_per_epoch, start=self.step_in_epoch
        )

    def run(self) -> TrainResult:
        cfg = self.config
        resuming = self._resume_state is not None
        self._write_run_files()
        if resuming:
            self._truncate_logs_for_resume()
            self._reload_epoch_losses()
            print(
                f"resuming {self.out} at epoch {self.epoch}, step {self.step_in_epoch}"
                f"/{cfg.steps_per_epoch} (global step {self.global_step})"
            )
        first_loss: float | None = None
        interrupted = False
        with self._sigint_handler():
            try:
                if not self.history:
                    # Epoch 0: the starting point, so "before/after" is always in the log and
                    # a run that only gets worse still keeps its initial model as best.pt.
                    start = time.perf_counter()
                    row = self._record_epoch(0, time.perf_counter() - start)
                    self._print_epoch(row)
                    save_checkpoint(self.out / "best.pt", self._state())
                    save_checkpoint(self.out / "last.pt", self._state())
                while self.epoch <= cfg.epochs:
                    if self.history and self.history[-1]["epoch"] == self.epoch:
                        # Stopped between an epoch's validation and its checkpoint: done.
                        self.epoch += 1
                        self.step_in_epoch = 0
                        continue
                    epoch_start = time.perf_counter()
                    bar = self._progress_bar()
                    for batch in self._batches():
                        t0 = time.perf_counter()
                        stats = self.train_step(batch)
                        self.global_step += 1
                        self.step_in_epoch += 1
                        if first_loss is None:
                            first_loss = stats["loss"]
                        row = {
                            "epoch": self.epoch,
                            "step": self.global_step,
                            "seconds": round(time.perf_counter() - t0, 4),
                            **stats,
                        }
                        self._step_log.append(row)
                        self._epoch_losses.append(stats["loss"])
                        self._epoch_active.append(stats["active_fraction"])
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(
                                loss=f"{stats['loss']:.4f}",
                                active=f"{stats['active_fraction']:.2f}",
                                lr=f"{stats['lr']:.2e}",
                            )
                        if self.on_step is not None:
                            self.on_step(self.global_step, stats)
                        if self._stop_requested:
                            raise KeyboardInterrupt
                    if bar is not None:
                        bar.close()
                    self._flush_steps()
                    row = self._record_epoch(self.epoch, time.perf_counter() - epoch_start)
                    self._print_epoch(row)
                    best_now = row["best"]
                    self.epoch += 1
                    self.step_in_epoch = 0
                    self._epoch_losses.clear()
                    self._epoch_active.clear()
                    state = self._state()
                    if best_now:
                        save_checkpoint(self.out / "best.pt", state)
                    save_checkpoint(self.out / "last.pt", state)
                    self.plot()
            except KeyboardInterrupt:
                interrupted = True
                self._flush_steps()
                save_checkpoint(self.out / "last.pt", self._state())
                self.plot()
                print(
                    f"\ninterrupted at global step {self.global_step}; saved {self.out / 'last.pt'}"
                    f"\nresume with: faceserve train --out {self.out} --resume"
                )
        result = TrainResult(
            out=self.out,
            interrupted=interrupted,
            global_step=self.global_step,
            history=self.history,
            best=self.best,
            first_loss=first_loss,
        )
        if not interrupted:
            self._write_summary()
        return result

    def _write_summary(self) -> None:
        before = self.history[0] if self.history else {}
        summary = {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "global_step": self.global_step,
            "before": before,
            "best": self.best,
            "last": self.history[-1] if self.history else {},
            "data": {
                k: v
                for k, v in self.data_summary().items()
                if k not in ("train_identities", "val_identities")
            },
            "seconds_training": round(sum(float(h["seconds"]) for h in self.history), 1),
        }
        _write_json(self.out / "summary.json", summary)

    def _progress_bar(self):
        if not self.config.progress:
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.config.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch}/{self.config.epochs}",
            unit="step",
            leave=False,
        )

    def _print_epoch(self, row: dict[str, Any]) -> None:
        if not self.config.progress:
            return
        loss = row["train_loss"]
        loss_txt = f"loss {loss:.4f}  " if loss != "" else ""
        print(
            f"epoch {row['epoch']:3d}  step {row['step']:6d}  {loss_txt}"
            f"val acc {row['val_accuracy']:.4f}  TAR@FAR={self.config.far:g} "
            f"{row['val_tar']:.4f}{'  *best' if row['best'] else ''}",
            flush=True,
        )

    @contextlib.contextmanager
    def _sigint_handler(self) -> Iterator[None]:
        """First Ctrl-C: finish the current step, save, stop. Second: stop at once (the
        KeyboardInterrupt path still saves)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            print("\nCtrl-C: stopping after this step (press again to stop now)", flush=True)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
