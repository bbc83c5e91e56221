"""The reference's fine-tuning recipe (its train.py), resumable exactly and runnable on one process or many.

One micro-batch: encode the crops once, then 11 interaction steps, each adding one click drawn from the current
error region (clicks.py) with the previous step's 32^3 logits as mask prompt (not detached); at one random step in
2..8 and at the last step the decoder sees the mask prompt only. The loss is Dice + binary cross-entropy on the logits
upsampled to the crop, summed over the steps. AdamW (weight decay 0.1) with the image encoder at `lr` and the prompt
encoder and decoder at `lr / 10`, MultiStepLR x0.1 at 60% and 90% of the epochs (the reference's 120 and 180 of 200),
gradient accumulation, autocast on CUDA (bf16 where supported, else fp16 with a GradScaler), gradient clipping.

Every random draw comes from generators seeded by (seed, epoch, position), so a run interrupted after any optimiser
step and continued with `resume` ends with the same weights as an uninterrupted one. A resume takes the recorded
settings (`resume_config`); one that differs is refused (`OtherRun`), except those in `APPLIED_ON_RESUME`, which do
not change the numbers. Every checkpoint records its provenance: the base checkpoint's SHA256, the data folder, the
settings and the software.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from SAMMed3DLib import provenance
from SAMMed3DLib.distributed import Context, barrier, gather, main_first, mean
from SAMMed3DLib.errors import OtherRun, SAMMed3DError
from SAMMed3DLib.evaluation import clicks, metrics
from SAMMed3DLib.files import atomic_path
from SAMMed3DLib.interactive.preprocess import normalise
from SAMMed3DLib.model.checkpoint import safe_load
from SAMMed3DLib.train import data
from SAMMed3DLib.train.config import APPLIED_ON_RESUME, TrainConfig
from SAMMed3DLib.weights import Progress

LATEST = "sam_model_latest.pth"
BEST = "sam_model_dice_best.pth"
LOG = "train_log.jsonl"
# What resuming restores; the reference's own checkpoints lack the position and RNG states.
_RESUME_KEYS = frozenset({
    "model_state_dict", "optimizer_state_dict", "lr_scheduler_state_dict", "scaler_state_dict", "step", "epoch",
    "micro_batch", "best_dice", "losses", "dices", "rng_states",
})
# (micro-batches done, micro-batches of the run, the optimiser step's log record when one just finished, else None)
TrainProgress = Callable[[int, int, Optional[Dict[str, Any]]], None]


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI's DiceCELoss(sigmoid=True, squared_pred=True) as the reference uses it: per-sample soft Dice with
    squared denominators (smoothing 1e-5) averaged over the batch, plus mean binary cross-entropy on the logits."""
    logits = logits.float()
    probability = torch.sigmoid(logits)
    dims = tuple(range(2, logits.ndim))
    intersection = (probability * target).sum(dims)
    denominator = (probability * probability).sum(dims) + (target * target).sum(dims)
    dice = 1 - (2 * intersection + 1e-5) / (denominator + 1e-5)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits, target)


class ClickTraining(nn.Module):
    """The interactive loss of one micro-batch as a single forward pass, so DistributedDataParallel sees one forward
    (and synchronises one backward) per micro-batch."""

    def __init__(self, model: nn.Module, steps: int) -> None:
        super().__init__()
        self.model = model
        self.steps = steps

    def forward(
        self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, last upsampled logits) for images and 0/1 labels (B, 1, S, S, S)."""
        mask_only_step = int(rng.integers(2, 9))
        embedding = self.model.encode(image)
        low_res = image.new_zeros((image.shape[0], 1) + (self.model.config.logits_size,) * 3)
        logits = None
        total = image.new_zeros(())
        for step in range(self.steps):
            prediction = None if logits is None else logits > 0
            points, labels = clicks.next_clicks(label, prediction, rng)
            if step in (mask_only_step, self.steps - 1):
                low_res, _ = self.model.decode(embedding, None, None, low_res)
            else:
                points_t = torch.from_numpy(points).to(image.device, torch.float32)[:, None]
                labels_t = torch.from_numpy(labels).to(image.device)[:, None]
                low_res, _ = self.model.decode(embedding, points_t, labels_t, low_res)
            logits = F.interpolate(low_res, size=label.shape[-3:], mode="trilinear", align_corners=False)
            total = total + dice_ce_loss(logits, label)
        return total, logits


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """bf16 on GPUs that support it, fp16 on older ones, no autocast on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device):
    dtype = autocast_dtype(device)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def validate(model: nn.Module, dataset: data.TargetCrops, context: Context, seed: int,
             click_counts: Tuple[int, ...]) -> Dict[str, float]:
    """Mean Dice after each of `click_counts` clicks with the paper's protocol (first click uniform in the target,
    each next one uniform in the error region; newest click plus previous logits), on the held-out crops.
    The targets are shared among the processes; every process gets the means."""
    was_training = model.training
    model.eval()
    scores: List[List[float]] = []
    for index in range(context.rank, len(dataset), context.world_size):
        rng = np.random.default_rng([seed, 11, index])
        image, truth = dataset.crop(index)
        image = normalise(image, dataset.cases[dataset.targets[index].case].modality)
        image_t = torch.from_numpy(image)[None, None].to(context.device)
        truth_t = torch.from_numpy(np.ascontiguousarray(truth)).to(context.device)
        with _autocast(context.device):
            embedding = model.encode(image_t)
            low_res = image_t.new_zeros((1, 1) + (model.config.logits_size,) * 3)
            prediction = None
            row = []
            for click in range(1, max(click_counts) + 1):
                point, label = clicks.next_clicks(truth_t, prediction, rng)
                points_t = torch.from_numpy(point).to(context.device, torch.float32)[:, None]
                low_res, _ = model.decode(embedding, points_t, torch.from_numpy(label).to(context.device)[:, None],
                                          low_res)
                logits = F.interpolate(low_res.float(), size=truth.shape, mode="trilinear", align_corners=False)
                prediction = logits[0, 0] > 0
                if click in click_counts:
                    row.append(metrics.dice(prediction.cpu().numpy(), truth))  # truth never empty: defined
        scores.append(row)
    model.train(was_training)
    everything = [row for part in gather(context, scores) for row in part]
    means = np.mean(np.asarray(everything, dtype=np.float64), axis=0) if everything else [math.nan] * len(click_counts)
    result = {f"dice_{count}": float(value) for count, value in zip(click_counts, means)}
    result["targets"] = len(everything)
    return result


def _rng_state() -> Dict[str, Any]:
    """Global RNG states as tensors and plain values (readable with torch.load(weights_only=True))."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_digest(model: nn.Module) -> str:
    """SHA256 of the state dict's names and bytes (to compare weights across processes and runs)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Holds the model, optimiser, scheduler and position of one run; `run()` trains to the end or `max_steps`."""

    def __init__(self, config: TrainConfig, context: Context, on_download: Optional[Progress] = None,
                 on_progress: Optional[TrainProgress] = None) -> None:
        self.config = config
        self.on_download = on_download  # progress of downloading a named checkpoint (rank 0)
        self.on_progress = on_progress  # progress per micro-batch (rank 0)
        self.context = context
        self.output = Path(config.output)
        if config.batch_size < 1 or config.accumulation_steps < 1 or config.epochs < 1:
            raise SAMMed3DError(f"batch size, accumulation steps and epochs must each be at least 1, got "
                                f"{config.batch_size}, {config.accumulation_steps} and {config.epochs}")
        if config.max_steps is not None and config.max_steps < 1:
            raise SAMMed3DError(f"the step limit must be at least 1, got {config.max_steps}")
        if context.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        seed_everything(config.seed + context.rank)
        if config.resume and not (self.output / LATEST).is_file():
            raise SAMMed3DError(f"nothing to resume: {self.output} holds no {LATEST}")
        self.model = self._build_model()
        self.train_set, self.validation_set = self._datasets()
        self.optimizer = torch.optim.AdamW(
            [
                {"params": self.model.image_encoder.parameters(), "lr": config.lr},
                {"params": self.model.prompt_encoder.parameters(), "lr": config.lr * 0.1},
                {"params": self.model.mask_decoder.parameters(), "lr": config.lr * 0.1},
            ],
            lr=config.lr,
            betas=(0.9, 0.999),
            weight_decay=config.weight_decay,
        )
        milestones = config.milestones or [round(0.6 * config.epochs), round(0.9 * config.epochs)]
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, gamma=0.1)
        use_scaler = autocast_dtype(context.device) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.step = 0
        self.epoch = 0
        self.micro_batch = 0  # micro-batches of the current epoch already trained on
        self.best_dice = -math.inf
        self._saved_at: Optional[Tuple[int, int, int]] = None
        self.losses: List[float] = []
        self.dices: List[float] = []
        self.provenance = self._provenance()
        if config.resume:
            self._resume()
        self.model.train()
        network: nn.Module = ClickTraining(self.model, config.interaction_steps)
        if context.distributed:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            # The IoU head and the unused prompt embeddings get no gradient from this loss.
            network = nn.parallel.DistributedDataParallel(network, device_ids=device_ids, find_unused_parameters=True)
        self.network = network

    # --- setup -----------------------------------------------------------------------------------------------

    def _build_model(self) -> nn.Module:
        """The network to train: from OUTPUT's latest checkpoint (resume), `checkpoint`, or random weights.

        `model_overrides` (not on the command line) change configuration fields, e.g. a smaller `image_size` for
        fast tests; the variant must then be named, and a checkpoint must fit the changed network.
        """
        from SAMMed3DLib.model import build_sam_med3d, load_sam_med3d, read_state_dict

        config = self.config
        source: Optional[Path] = None
        self.base: Optional[Path] = None  # the checkpoint the run started from
        if config.resume:  # the weights come later with the rest of the state; the file tells the variant
            source = self.output / LATEST
        elif config.checkpoint:
            from SAMMed3DLib import weights

            progress = self.on_download if self.context.is_main else None
            source = main_first(self.context, lambda: weights.resolve(config.checkpoint, on_progress=progress))
            self.base = source
        if source is not None and not config.model_overrides:
            return load_sam_med3d(source, self.context.device, config.variant)
        if config.model_overrides and not config.variant:
            raise SAMMed3DError("model_overrides need a named variant to override")
        model = build_sam_med3d(config.variant or "vit_b_ori", **config.model_overrides)
        if source is not None:
            model.load_state_dict(read_state_dict(source), strict=True)
        return model.to(self.context.device)

    def _datasets(self) -> Tuple[data.TargetCrops, Optional[data.TargetCrops]]:
        config, context = self.config, self.context
        cases = data.find_cases(Path(config.data))
        train_cases, validation_cases = data.split_cases(cases, config.validation_fraction, config.seed)
        cache = self.output / "cache"
        everything = train_cases + validation_cases
        for case in everything[context.rank :: context.world_size]:  # each process resamples its share
            data.cache_case(case, cache)
        barrier(context)
        size = self.model.config.image_size
        train_cached, train_targets = data.load_cached([data.cache_case(c, cache) for c in train_cases])
        train_set = data.TargetCrops(train_cached, train_targets, size, augment=True, min_voxels=config.min_voxels)
        validation_set = None
        if validation_cases:
            cached, targets = data.load_cached([data.cache_case(c, cache) for c in validation_cases])
            validation_set = data.TargetCrops(cached, targets, size, augment=False)
        return train_set, validation_set

    def _resume(self) -> None:
        path = self.output / LATEST
        state = safe_load(path, self.context.device)
        if not isinstance(state, dict) or not _RESUME_KEYS.issubset(state):
            raise SAMMed3DError(f"{path} cannot be resumed: it lacks the optimiser and position state that "
                                "fine-tuning writes (a reference or published checkpoint?)")
        recorded = state.get("provenance") or {}
        _check_resume(self.output, self.config, dict(state.get("args") or {}), recorded)
        self.provenance["base_checkpoint"] = recorded.get("base_checkpoint")
        self.model.load_state_dict(state["model_state_dict"], strict=True)
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["lr_scheduler_state_dict"])
        self.scaler.load_state_dict(state["scaler_state_dict"])
        self.step, self.epoch, self.micro_batch = state["step"], state["epoch"], state["micro_batch"]
        self.best_dice = state["best_dice"]
        self.losses, self.dices = list(state["losses"]), list(state["dices"])
        rng_states = state["rng_states"]
        if len(rng_states) == self.context.world_size:
            _set_rng_state(rng_states[self.context.rank])
        if self.context.is_main:
            self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from (a run killed between two saves), and a line
        torn by a kill in the middle of an append."""
        path = self.output / LOG
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record["step"] <= self.step:
                kept.append(line)
        with atomic_path(path) as temporary:
            temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    # --- saving ------------------------------------------------------------------------------------------------

    def _checkpoint(self) -> Dict[str, Any]:
        args = _recorded_args(self.config)
        return {
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "lr_scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "micro_batch": self.micro_batch,
            "losses": self.losses,
            "dices": self.dices,
            "best_loss": min(self.losses) if self.losses else math.inf,
            "best_dice": self.best_dice,
            "args": args,
            "provenance": self.provenance,
            "rng_states": gather(self.context, _rng_state()),
        }

    def _provenance(self) -> Dict[str, Any]:
        """What the checkpoints record besides the settings (`args`): the base checkpoint by SHA256, the data folder,
        the software and where it ran."""
        hashed = self.base is not None and self.context.is_main  # only rank 0 writes checkpoints
        base = provenance.checkpoint(self.base, self.config.checkpoint) if hashed else None
        return {"base_checkpoint": base, "data": str(Path(self.config.data).resolve()),
                **provenance.run(f"PyTorch on {self.context.device.type}", str(self.context.device)),
                "processes": self.context.world_size}

    def save(self, name: str) -> None:
        """Write a checkpoint in the reference's format (all processes call this; only rank 0 writes)."""
        checkpoint = self._checkpoint()
        if self.context.is_main:
            with atomic_path(self.output / name) as temporary:
                torch.save(checkpoint, temporary)
        if name == LATEST:
            self._saved_at = self.step, self.epoch, self.micro_batch

    def _check_consistent(self) -> None:
        """Log every process's weights digest; under DDP they must be identical, else the run is wrong."""
        digests = gather(self.context, weights_digest(self.model))
        self.log({"kind": "end", "step": self.step, "epoch": self.epoch, "weights_sha256": digests})
        if len(set(digests)) != 1:
            raise RuntimeError(f"the processes ended with different weights: {digests}")

    def log(self, record: Dict[str, Any]) -> None:
        if self.context.is_main:
            with open(self.output / LOG, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(record) + "\n")

    # --- training ----------------------------------------------------------------------------------------------

    def _loader(self, batches: data.EpochBatches):
        """The epoch's micro-batches. torch's warning about more workers than CPUs is not passed on: the default
        follows the machine (`default_workers`), and a larger number is the user's explicit choice."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
            loader = torch.utils.data.DataLoader(
                self.train_set,
                batch_sampler=batches,
                num_workers=self.config.num_workers,
                collate_fn=data.collate,
                pin_memory=self.context.device.type == "cuda",
            )
            return iter(loader)

    def _steps_per_epoch(self) -> int:
        config = self.config
        return data.steps_per_epoch(len(self.train_set), config.batch_size, config.accumulation_steps,
                                    self.context.world_size)

    def total_steps(self) -> int:
        total = self._steps_per_epoch() * self.config.epochs
        return total if self.config.max_steps is None else min(total, self.config.max_steps)

    def _finished(self) -> bool:
        return self.step >= self.total_steps()

    def run(self) -> Dict[str, Any]:
        """Train until the last epoch or `max_steps`; returns the last step's and validation's numbers."""
        config, context = self.config, self.context
        summary: Dict[str, Any] = {}
        self._report(None)
        try:
            while not self._finished():
                completed = self._train_epoch(summary)
                if not completed:
                    break
                self.scheduler.step()
                self.epoch += 1
                self.micro_batch = 0
                self._end_of_epoch(summary)
            if self._saved_at != (self.step, self.epoch, self.micro_batch):
                self.save(LATEST)
            self._check_consistent()
        except KeyboardInterrupt:
            if not context.distributed:  # keep what was trained, from the last optimiser step on
                self.micro_batch -= self.micro_batch % config.accumulation_steps
                self.optimizer.zero_grad(set_to_none=True)
                self.save(LATEST)
            raise
        return summary

    def _report(self, record: Optional[Dict[str, Any]]) -> None:
        """Progress in micro-batches of the whole run (rank 0)."""
        if self.on_progress is not None and self.context.is_main:
            accumulation = self.config.accumulation_steps
            done = self.step * accumulation + self.micro_batch % accumulation
            self.on_progress(done, self.total_steps() * accumulation, record)

    def _train_epoch(self, summary: Dict[str, Any]) -> bool:
        """Micro-batches of the current epoch from `micro_batch` on; False if `max_steps` ended it early."""
        config, context = self.config, self.context
        batches = data.EpochBatches(len(self.train_set), config.batch_size, config.accumulation_steps,
                                    context.world_size, context.rank, config.seed, self.epoch, self.micro_batch)
        accumulated, started = 0.0, time.perf_counter()
        for batch in self._loader(batches):
            if self._finished():
                return False
            last_of_step = (self.micro_batch + 1) % config.accumulation_steps == 0
            rng = np.random.default_rng([config.seed, self.epoch, self.micro_batch, context.rank, 1])
            image = batch["image"].to(context.device, non_blocking=True)
            label = batch["label"].to(context.device, non_blocking=True)
            sync = nullcontext() if last_of_step or not context.distributed else self.network.no_sync()
            with sync:
                with _autocast(context.device):
                    loss, _ = self.network(image, label, rng)
                self.scaler.scale(loss / config.accumulation_steps).backward()
            accumulated += float(loss.detach())
            self.micro_batch += 1
            if last_of_step:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                step_loss = mean(context, accumulated / config.accumulation_steps)
                self.losses.append(step_loss)
                seconds = time.perf_counter() - started
                record = {
                    "kind": "train", "step": self.step, "epoch": self.epoch, "loss": step_loss,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "lr_prompt_decoder": self.optimizer.param_groups[1]["lr"],
                    "seconds": seconds,
                    "samples_per_s": config.batch_size * config.accumulation_steps * context.world_size / seconds,
                }
                self.log(record)
                summary.update(record)
                accumulated, started = 0.0, time.perf_counter()
            self._report(record if last_of_step else None)
        return True

    def _end_of_epoch(self, summary: Dict[str, Any]) -> None:
        """Validate on the held-out split, keep the best-Dice checkpoint and the latest one."""
        if self.validation_set is not None and len(self.validation_set):
            started = time.perf_counter()
            scores = validate(self.model, self.validation_set, self.context, self.config.seed,
                              tuple(self.config.validation_clicks))
            score = float(np.mean([scores[f"dice_{c}"] for c in self.config.validation_clicks]))
            self.dices.append(score)
            best = score > self.best_dice
            if best:
                self.best_dice = score
            record = {"kind": "validation", "step": self.step, "epoch": self.epoch, **scores,
                      "best": best, "seconds": time.perf_counter() - started}
            self.log(record)
            summary["validation"] = record
            if best:
                self.save(BEST)
        self.save(LATEST)


def train(config: TrainConfig, context: Context, on_download: Optional[Progress] = None,
          on_progress: Optional[TrainProgress] = None) -> Dict[str, Any]:
    """Run the whole recipe; returns the last logged numbers. `on_download` shows a named checkpoint's download,
    `on_progress` the training (`TrainProgress`)."""
    return Trainer(config, context, on_download, on_progress).run()


def resume_config(output: Path, given: Dict[str, Any]) -> TrainConfig:
    """The settings to continue the run in `output` with: the ones its latest checkpoint records, with the `given`
    ones (what the user asked for explicitly) on top; `Trainer` refuses a given one that differs from the record
    (`APPLIED_ON_RESUME` aside)."""
    state = safe_load(Path(output) / LATEST, torch.device("cpu"), mmap=True)  # the settings: tensors stay on disk
    recorded = state.get("args") if isinstance(state, dict) else None  # a Namespace: the reference's, not resumable
    known = {name for name in TrainConfig.__dataclass_fields__ if name not in APPLIED_ON_RESUME}
    settings = {key: value for key, value in (recorded if isinstance(recorded, dict) else {}).items() if key in known}
    if "validation_clicks" in settings:
        settings["validation_clicks"] = tuple(settings["validation_clicks"])
    return TrainConfig(**{**settings, **given, "output": str(output), "resume": True})


def _recorded_args(config: TrainConfig) -> Dict[str, Any]:
    """The settings as a checkpoint records them (`args`): tuples as lists, also inside `model_overrides`, so that a
    record read back compares equal."""
    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    args = {key: plain(value) for key, value in asdict(config).items()}
    args["model_overrides"] = {key: plain(value) for key, value in config.model_overrides.items()}
    return args


def _check_resume(output: Path, config: TrainConfig, recorded: Dict[str, Any], record: Dict[str, Any]) -> None:
    """`OtherRun` listing every setting of `config` that differs from the `recorded` ones (APPLIED_ON_RESUME aside);
    the data folder is compared as resolved paths, a checkpoint by its SHA256 (`record`: the run's provenance)."""
    current = _recorded_args(config)
    changed = {}
    for key, now in current.items():
        if key in APPLIED_ON_RESUME or key == "output" or key not in recorded or recorded[key] == now:
            continue
        if key == "data" and Path(str(record.get("data", recorded[key]))).resolve() == Path(now).resolve():
            continue
        if key == "checkpoint" and now is not None and _same_checkpoint(now, record.get("base_checkpoint")):
            continue
        changed[key] = (recorded[key], now)
    if changed:
        raise OtherRun(output, changed)


def _same_checkpoint(given: str, base: Optional[Dict[str, Any]]) -> bool:
    from SAMMed3DLib import weights

    return base is not None and weights.sha256_of(weights.resolve(given)) == base.get("sha256")
