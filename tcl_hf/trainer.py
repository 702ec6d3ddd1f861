"""The TCL trainer: data, model, EM step, training loop, evaluation and outputs, wired by accelerate.

``Trainer(cfg).train()`` runs a whole job; ``.detect_noise()`` and ``.evaluate()`` are usable on
their own (e.g. after loading a checkpoint).
"""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import detector
from .config import Config, flatten, save_config, to_dict
from .contract import resolve_input_contract
from .data import DataBundle, load_data
from .errors import DataError, StopRequested, TCLError
from .hub import check_push_token
from .metrics import detection_metrics, knn_predict
from .models import TCLModel
from .noise import make_noisy_labels
from .objective import TCLWeights, ce_loss, mixup, tcl_loss
from .optim import build_optimizer, lr_at, scaled_lr
from . import rundir
from .views import Views


class GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums, over all processes, the gradient each one's loss sends to our
    rows, built on public collectives only.

    Every process computes the same full-batch contrastive loss; after DDP averages over the W
    processes, each parameter gets exactly the gradient of that loss, so 1, 2 or 4 processes at the
    same total batch train alike. The reference's GatherLayer passes back only the local slot's
    gradient, which after DDP's averaging is 1/W of the true one (spec section 3): that is what
    ``tcl.lambda_con = 1/W_ref`` reproduces."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor):
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        import torch.distributed as dist

        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


RUN_STATE_TENSORS, RUN_STATE_JSON = "run_state.safetensors", "run_state.json"


class RunState:
    """Everything besides model/optimizer/RNG that a resumed run needs: progress and EM state."""

    def __init__(self, num_samples: int, num_classes: int, proj_dim: int):
        self.epoch = 0          # completed epochs
        self.step = 0           # optimizer steps taken
        self.batches_done = 0   # batches of the epoch in progress (a mid-epoch checkpoint resumes after them)
        self.loss_sums: dict[str, float] = {}  # running sums of the loss terms over those batches
        self.samples = 0        # training samples processed (all processes)
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.confidences = torch.zeros(num_samples)
        self.assignments = torch.zeros(num_samples, num_classes)
        self.prototypes = F.normalize(torch.randn(num_classes, proj_dim), dim=1)
        self.scale1 = 0.0
        self.scale2 = 0.0

    TENSORS = ("confidences", "assignments", "prototypes")

    def save(self, folder: Path) -> None:
        """Tensors as safetensors, the rest as JSON: a checkpoint's own state never needs unpickling."""
        safetensors.torch.save_file({k: getattr(self, k).contiguous() for k in self.TENSORS},
                                    str(folder / RUN_STATE_TENSORS))
        scalars = {k: v for k, v in vars(self).items() if k not in self.TENSORS}
        (folder / RUN_STATE_JSON).write_text(json.dumps(scalars, indent=1) + "\n")

    def load(self, folder: Path) -> None:
        tensors = safetensors.torch.load_file(str(folder / RUN_STATE_TENSORS))
        scalars = json.loads((folder / RUN_STATE_JSON).read_text())
        expected = {k: tuple(getattr(self, k).shape) for k in self.TENSORS}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected or set(scalars) != set(vars(self)) - set(self.TENSORS):
            raise ValueError(f"run state does not match this run (tensors {found}, expected {expected})")
        for key, value in {**scalars, **tensors}.items():
            setattr(self, key, value)


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGINT to the main process: a scheduler signals the whole process group,
    and a worker dying first would take the main process down before it saves its checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Trainer:
    """Builds everything from a validated ``Config`` and runs TCL (or the CE baseline)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        check_push_token(cfg.hub.repo_id)  # a push bound to fail should stop the run now, not after training
        # The contrastive loss is skipped in CE mode, so DDP must tolerate the projector's unused weights.
        ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=cfg.method == "ce")
        self.accelerator = Accelerator(
            mixed_precision=cfg.train.mixed_precision,
            gradient_accumulation_steps=cfg.train.grad_accum_steps,
            log_with="wandb" if cfg.log.with_ == "wandb" else None,
            project_dir=str(self.output_dir),
            # Seeded shuffling, so a resumed epoch sees the same order as an uninterrupted one.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
            kwargs_handlers=[ddp_kwargs],
        )
        # One run per folder: take the lock, then refuse a clash with another run before spending time
        # on data or models (nothing is removed before the new run is ready to train).
        self._lock = self._lock_output_dir()
        rundir.check_reuse(self.output_dir, cfg.train.resume, cfg.overwrite, to_dict(cfg))
        self.accelerator.wait_for_everyone()
        set_seed(cfg.seed)
        self._stop_signal: int | None = None
        self.data = self._load_data()
        self.num_classes = self.data.num_classes
        self.given_labels, self.clean_labels = self._labels(self.data)
        self.model, self.optimizer = self._build_model()
        train_loader, train_eval_loader, eval_loaders = self._build_loaders()
        names = list(eval_loaders)
        prepared = self.accelerator.prepare(self.model, self.optimizer, train_loader, train_eval_loader,
                                            *eval_loaders.values())
        self.model, self.optimizer, self.train_loader, self.train_eval_loader = prepared[:4]
        self.eval_loaders = dict(zip(names, prepared[4:]))
        device = self.accelerator.device
        contract = self.data.contract
        self.views = Views(contract.size, contract.mean, contract.std, cfg.aug.crop_padding,
                           cfg.aug.strong_scale_min, cfg.aug.hflip, storage_size=contract.storage_size).to(device)
        self.given_labels = self.given_labels.to(device)
        self.eval_labels = {name: torch.as_tensor(labels, device=device)
                            for name, (_, labels) in self.data.eval_sets.items()}
        self.bad_counts: dict[str, int] = {}
        n = len(self.data.train)
        self.state = RunState(n, self.num_classes, cfg.model.proj_dim)
        self.total_batch = cfg.train.batch_size * self.accelerator.num_processes * cfg.train.grad_accum_steps
        self.peak_lr = scaled_lr(cfg.optim.lr, self.total_batch, cfg.optim.scale_lr)
        self.steps_per_epoch = max(len(self.train_loader) // cfg.train.grad_accum_steps, 1)
        self._train_bank: tuple[torch.Tensor, torch.Tensor] | None = None  # kNN bank: z and labels
        self.train_probs: torch.Tensor | None = None  # class probabilities of every training sample
        self.train_bad: torch.Tensor | None = None    # training images that could not be read
        self._last_em: dict = {}
        self._resumed_from: Path | None = None
        self._em_device_copy: tuple | None = None

    # ---- construction -------------------------------------------------------------------------
    def _lock_output_dir(self) -> rundir.RunLock | None:
        """The main process holds the folder's lock; every process stops if it could not be taken."""
        acc = self.accelerator
        rundir.check_writable(self.output_dir)
        lock, problem = None, None
        if acc.is_main_process:
            try:
                lock = rundir.RunLock(self.output_dir).acquire()
            except TCLError as exc:
                problem = exc
        if self._any_process(problem is not None):
            raise problem or TCLError(f"output_dir: {self.output_dir} is in use by another tcl_hf run")
        return lock

    def _any_process(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (a collective when there are several)."""
        if self.accelerator.num_processes == 1:
            return flag
        total = self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device), "sum")
        return bool(total > 0)

    def _load_data(self) -> DataBundle:
        cfg = self.cfg
        contract = resolve_input_contract(cfg.data, cfg.model)
        # Decoding happens once per machine; the main process goes first so datasets' cache is warm.
        with self.accelerator.main_process_first():
            data = load_data(cfg.data, contract, seed=cfg.seed)
        if data.unlabelled:
            self.accelerator.print(f"left out {data.unlabelled} listed training image(s) without an entry in the "
                                   f"label file")
        return data

    def _labels(self, data: DataBundle) -> tuple[torch.Tensor, np.ndarray | None]:
        cfg = self.cfg
        noise = cfg.noise
        seed = cfg.seed if noise.seed is None else noise.seed
        given = make_noisy_labels(noise.type, data.train_labels, data.num_classes, noise.rate, seed,
                                  file=noise.file, full_size=data.full_train_size, limit=cfg.data.limit,
                                  label_set=noise.label_set)
        # With synthetic noise the dataset's own labels are the clean ones; otherwise only a clean column tells.
        clean = data.clean_train_labels
        if clean is None and noise.type != "none":
            clean = data.train_labels
        return torch.as_tensor(given), clean

    def _build_model(self):
        cfg = self.cfg
        weights = cfg.model.pretrained_file
        pretrained = cfg.model.pretrained or weights is not None
        try:
            model = TCLModel(cfg.model.backbone, self.num_classes, cfg.model.proj_dim, cfg.model.dropout,
                             pretrained=pretrained, pretrained_cfg_overlay=dict(file=weights) if weights else None)
        except Exception as exc:  # hub lookups and state-dict loading raise many types
            if not pretrained:
                raise
            source = weights or "the Hugging Face Hub"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TCLError(f"model.pretrained: cannot load {cfg.model.backbone!r} weights from {source} "
                           f"({reason[:160]}); offline, give model.pretrained_file=WEIGHTS or set "
                           f"model.pretrained=false") from None
        if cfg.train.sync_bn and self.accelerator.num_processes > 1 and self.accelerator.device.type == "cuda":
            # Must happen before prepare(): DDP wraps whatever modules exist at that point. (PyTorch's
            # SyncBatchNorm runs on GPUs only; CPU processes keep per-process statistics.)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay)
        return model, optimizer

    def _build_loaders(self):
        cfg = self.cfg
        n = len(self.data.train)
        global_batch = cfg.train.batch_size * self.accelerator.num_processes
        if n < global_batch:
            raise DataError(f"train.batch_size: {cfg.train.batch_size} per process x {self.accelerator.num_processes} "
                            f"process(es) exceeds the {n} training samples; lower train.batch_size")
        eval_batch = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
        workers = cfg.data.num_workers

        def own_generator() -> torch.Generator:
            # Starting an iterator draws a worker seed; from a private generator that draw leaves the
            # global RNG alone, so a mid-epoch resume replays the same augmentations.
            return torch.Generator().manual_seed(cfg.seed)

        sampler = self.data.train_sampler
        train = DataLoader(self.data.train, batch_size=cfg.train.batch_size, shuffle=sampler is None,
                           sampler=sampler, drop_last=True, num_workers=workers,
                           pin_memory=torch.cuda.is_available(), generator=own_generator(),
                           persistent_workers=workers > 0, worker_init_fn=ignore_stop_signals)
        train_eval = DataLoader(self.data.train, batch_size=eval_batch, shuffle=False, num_workers=workers,
                                generator=own_generator(), worker_init_fn=ignore_stop_signals)
        evals = {name: DataLoader(dataset, batch_size=eval_batch, shuffle=False, num_workers=workers,
                                  generator=own_generator(), worker_init_fn=ignore_stop_signals)
                 for name, (dataset, _) in self.data.eval_sets.items()}
        return train, train_eval, evals

    # ---- one optimizer step -------------------------------------------------------------------
    def _gather_with_grad(self, z: torch.Tensor) -> torch.Tensor:
        """All processes' rows with gradients flowing back to ours; batches may differ in size
        (skipped images), so rows are padded to the largest batch and the padding cut away."""
        sizes = self.accelerator.gather(torch.tensor([z.shape[0]], device=z.device)).tolist()
        padded = F.pad(z, (0, 0, 0, max(sizes) - z.shape[0]))
        return torch.cat([part[:size] for part, size in zip(GatherWithGrad.apply(padded), sizes)], dim=0)

    def _tcl_terms(self, images: torch.Tensor, index: torch.Tensor, warmup: bool) -> dict[str, torch.Tensor]:
        cfg, views, st = self.cfg, self.views, self.state
        x_w, x_q, x_k = views.weak(images), views.strong(images), views.strong(images)
        x_mix, perm, lam = mixup(torch.cat([x_w, x_q, x_k]), cfg.tcl.mixup_alpha)
        b = images.shape[0]
        # One pass over all six parts keeps batch-norm statistics shared, as in the reference.
        z, logits = self.model(torch.cat([x_w, x_mix, x_q, x_k]))
        _, z_mix, z_q, z_k = z.split([b, 3 * b, b, b])
        _, logits_mix, logits_q, logits_k = logits.split([b, 3 * b, b, b])
        confidences, prototypes = self._em_on_device()
        return tcl_loss(
            z_q, z_k, z_mix, logits_q, logits_k, logits_mix,
            labels=self.given_labels[index], confidences=confidences[index],
            prototypes=prototypes, lam=lam, perm=perm, scale1=st.scale1, scale2=st.scale2,
            warmup=warmup, temperature=cfg.tcl.temperature,
            weights=TCLWeights(cfg.tcl.lambda_con, cfg.tcl.lambda_cls, cfg.tcl.lambda_align, cfg.tcl.lambda_ent,
                               cfg.tcl.lambda_ne),
            gather=self._gather_with_grad if self.accelerator.num_processes > 1 else None,
        )

    def _em_on_device(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The EM step's confidences and prototypes on the training device, copied once per EM step
        (the checkpointed originals stay on the CPU)."""
        st = self.state
        if self._em_device_copy is None or self._em_device_copy[0] is not st.confidences:
            device = self.accelerator.device
            self._em_device_copy = (st.confidences, st.confidences.to(device), st.prototypes.to(device))
        return self._em_device_copy[1], self._em_device_copy[2]

    def _ce_terms(self, images: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        _, logits = self.model(self.views.weak(images))
        return ce_loss(logits, self.given_labels[index])

    def _set_lr(self) -> float:
        o = self.cfg.optim
        epoch = (self.state.step + 1) / self.steps_per_epoch
        lr = lr_at(epoch, self.peak_lr, o.warmup_epochs, self.cfg.train.epochs, o.min_lr_ratio, o.cosine_quirk)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _max_steps_reached(self) -> bool:
        return self.cfg.train.max_steps is not None and self.state.step >= self.cfg.train.max_steps

    def train_epoch(self, epoch: int, progress=None) -> dict[str, float]:
        """One pass over the training set (or the rest of it after a mid-epoch resume).

        Returns the epoch's mean loss terms and last lr. Raises ``StopRequested`` after saving a
        checkpoint when a stop signal arrived.
        """
        cfg, acc, st = self.cfg, self.accelerator, self.state
        self.model.train()
        self.train_loader.set_epoch(epoch)
        loader = self.train_loader
        if self.data.train_sampler is not None:
            self.data.train_sampler.set_epoch(epoch)
        if st.batches_done:
            # The sampler's order is fixed by (seed, epoch), so skipping reproduces the rest of the epoch.
            loader = acc.skip_first_batches(self.train_loader, st.batches_done)
        warmup = epoch < cfg.optim.warmup_epochs
        lr = self._set_lr()
        start = time.perf_counter()
        for images, index, ok in loader:
            if not bool(ok.all()) and int(ok.sum()) >= 2:
                # Unreadable images were handed out as zeros: leave them out of the step.
                images, index = images[ok], index[ok]
            with acc.accumulate(self.model):
                lr = self._set_lr()
                terms = (self._tcl_terms(images, index, warmup) if cfg.method == "tcl"
                         else self._ce_terms(images, index))
                acc.backward(terms["loss"])
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            values = dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))
            self._check_finite(values, epoch)
            for key, value in values.items():
                st.loss_sums[key] = st.loss_sums.get(key, 0.0) + value
            st.batches_done += 1
            st.samples += images.shape[0] * acc.num_processes
            if acc.sync_gradients:
                st.step += 1
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.4f}")
                if self._stop_requested():
                    st.train_seconds += time.perf_counter() - start
                    raise StopRequested(self.save_checkpoint())
            if self._max_steps_reached():
                break
        st.train_seconds += time.perf_counter() - start
        keys = sorted(st.loss_sums)
        means = {}
        if keys:
            local = torch.tensor([st.loss_sums[k] / st.batches_done for k in keys], device=acc.device)
            means = dict(zip(keys, acc.reduce(local, "mean").tolist()))
        st.batches_done, st.loss_sums = 0, {}
        means["lr"] = lr
        return means

    def _stop_requested(self) -> bool:
        """True on every process once any process got SIGTERM/SIGINT, so all save the same step."""
        flag = self._stop_signal is not None
        if self.accelerator.num_processes > 1:
            flag = bool(self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device), "sum") > 0)
        return flag

    # ---- EM step and evaluation ---------------------------------------------------------------
    @torch.no_grad()
    def extract(self, loader: DataLoader, num_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalized projections [N, d], class probabilities [N, C] and a mask of unreadable
        images [N], every sample exactly once across all processes."""
        acc = self.accelerator
        model = acc.unwrap_model(self.model)
        model.eval()
        z_all = torch.zeros(num_samples, self.cfg.model.proj_dim, device=acc.device)
        p_all = torch.zeros(num_samples, self.num_classes, device=acc.device)
        bad = torch.zeros(num_samples, dtype=torch.bool, device=acc.device)
        seen = torch.zeros(num_samples, dtype=torch.long, device=acc.device)
        for images, index, ok in loader:
            z, logits = model(self.views.test(images))
            # gather_for_metrics drops the samples the distributed sampler repeated to even out shards.
            z, p, index, ok = acc.gather_for_metrics((z.float(), F.softmax(logits.float(), dim=1), index, ok))
            z_all[index] = z
            p_all[index] = p
            bad[index] = ~ok
            seen.index_add_(0, index, torch.ones_like(index))
        if not bool((seen == 1).all()):
            raise RuntimeError(f"feature extraction saw {int((seen == 0).sum())} samples 0 times and "
                               f"{int((seen > 1).sum())} more than once")
        return z_all, p_all, bad

    def detect_noise(self) -> dict[str, float | None]:
        """The EM step over the whole training set; updates confidences, prototypes and scales.

        Unreadable images take no part and get confidence 0.
        """
        cfg, st = self.cfg, self.state
        z, p, bad = self.extract(self.train_eval_loader, len(self.data.train))
        self.bad_counts["train"] = int(bad.sum())
        good = ~bad
        labels = self.given_labels
        confidences = torch.zeros(len(labels), device=z.device)
        if cfg.method == "tcl":
            em = detector.em_step(z[good], p[good], labels[good], cfg.tcl.temperature, cfg.tcl.per_class_gmm)
            assignments = torch.zeros_like(p)
            assignments[good] = em.assignments
            confidences[good] = em.confidences
            st.prototypes, st.assignments = em.prototypes.cpu(), assignments.cpu()
        else:
            confidences[good] = detector.prediction_confidences(p[good], labels[good], cfg.tcl.per_class_gmm)
        st.confidences = confidences.cpu()
        clean_ratio = float((confidences[good] > 0.5).float().mean())
        # Reference quirk kept: unset scales follow the estimated *clean* fraction.
        st.scale1 = cfg.tcl.scale1 if cfg.tcl.scale1 is not None else clean_ratio
        st.scale2 = cfg.tcl.scale2 if cfg.tcl.scale2 is not None else clean_ratio
        self._train_bank = (z[good], labels[good])
        self.train_probs, self.train_bad = p, bad
        keep = good.cpu().numpy()
        clean = self.clean_labels[keep] if self.clean_labels is not None else None
        self._last_em = detection_metrics(st.confidences.numpy()[keep], labels.cpu().numpy()[keep], clean,
                                          p.argmax(dim=1).cpu().numpy()[keep])
        return self._last_em

    def evaluate(self) -> dict[str, float]:
        """Top-1/top-5 accuracy of the classifier on every held-out set, and kNN accuracy on the
        test set of z voting with the given train labels. Unreadable images are left out."""
        if self._train_bank is None:
            self.detect_noise()
        z_train, y_train = self._train_bank
        out = {}
        for name, loader in self.eval_loaders.items():
            labels = self.eval_labels[name]
            z, p, bad = self.extract(loader, len(labels))
            self.bad_counts[name] = int(bad.sum())
            good = ~bad
            top = p[good].topk(min(5, self.num_classes), dim=1).indices
            hits = top == labels[good].unsqueeze(1)
            out[f"{name}_acc"] = float(hits[:, 0].float().mean())
            if self.num_classes > 5:
                out[f"{name}_top5"] = float(hits.any(dim=1).float().mean())
            if name == "test":
                knn = knn_predict(z[good], z_train, y_train, self.num_classes, self.cfg.eval.knn_k, self.cfg.eval.knn_t)
                out["knn_acc"] = float((knn == labels[good]).float().mean())
        return out

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Written aside with a manifest, then renamed: a half-written checkpoint is never picked up."""
        acc = self.accelerator

        def write(folder: Path) -> None:
            acc.save_state(str(folder))
            if acc.is_main_process:
                self.state.save(folder)

        return rundir.write_checkpoint(self.output_dir, self.state.step, write, self.cfg.train.checkpoints_to_keep,
                                       acc.is_main_process, acc.wait_for_everyone)

    def resume(self) -> bool:
        """Load the newest complete and loadable checkpoint, naming any skipped; False when there is none."""
        acc = self.accelerator

        def load(folder: Path) -> None:
            acc.load_state(str(folder))
            self.state.load(folder)

        found, skipped = rundir.load_newest_checkpoint(self.output_dir, load, self._any_process)
        for note in skipped:
            acc.print(f"skipped checkpoint {note}")
        self._train_bank = None
        self._resumed_from = found
        return found is not None

    # ---- the whole run --------------------------------------------------------------------------
    def _record(self, epoch: int, losses: dict) -> dict:
        record = {"epoch": epoch, "step": self.state.step, **losses, **self.evaluate(), **self._last_em,
                  "scale1": self.state.scale1, "scale2": self.state.scale2}
        bad = sum(self.bad_counts.values())
        return {**record, "bad_images": bad} if bad else record

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # a second signal means "now"
        self._stop_signal = signum
        self.accelerator.print(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step "
                               f"(send again to stop at once)")

    def train(self) -> dict:
        """Run the job to the end (or to train.max_steps) and write every output; returns the summary.

        SIGTERM/SIGINT stop it at the next step boundary with a checkpoint (raises StopRequested).
        """
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._run()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self._lock is not None:
                self._lock.release()

    def _run(self) -> dict:
        cfg, acc, st = self.cfg, self.accelerator, self.state
        started = time.perf_counter()
        if cfg.log.with_:
            acc.init_trackers(cfg.log.project, config=flatten(to_dict(cfg)),
                              init_kwargs={"wandb": {"name": cfg.log.run_name, "dir": str(self.output_dir)}})
        if acc.is_main_process:
            if cfg.overwrite and not cfg.train.resume:
                # The new run has its data and model: only now may the previous run's outputs go.
                rundir.clear_previous_outputs(self.output_dir)
            save_config(cfg, self.output_dir / rundir.CONFIG_FILE)
        acc.wait_for_everyone()
        resumed = cfg.train.resume and self.resume()
        if resumed:
            acc.print(f"resumed from {self._resumed_from} (epoch {st.epoch}, step {st.step})")
            if acc.is_main_process:
                rundir.trim_metrics(self.output_dir, st.epoch)
        else:
            if cfg.train.resume:
                acc.print(f"no checkpoint in {self.output_dir}: starting from scratch")
            self.detect_noise()  # the EM step before epoch 1 gives the first confidences
            acc.print(f"initial EM step: {_fmt(self._last_em)}")
        wall_before = st.wall_seconds
        record: dict = {}
        progress = tqdm(total=cfg.train.epochs * self.steps_per_epoch, initial=st.step, unit="step",
                        disable=not (acc.is_main_process and cfg.log.progress), dynamic_ncols=True)
        try:
            for epoch in range(st.epoch + 1, cfg.train.epochs + 1):
                if self._max_steps_reached():
                    break
                losses = self.train_epoch(epoch, progress)
                self.detect_noise()
                st.epoch = epoch
                record = self._record(epoch, losses)
                self._log(record)
                st.wall_seconds = wall_before + time.perf_counter() - started
                self.save_checkpoint()
        finally:
            progress.close()
        if not record:
            # Nothing left to train (resumed a finished run, or max_steps already reached).
            if self._train_bank is None:
                self.detect_noise()
            record = self._record(st.epoch, {})
        st.wall_seconds = wall_before + time.perf_counter() - started
        summary = {**record, "epochs_completed": st.epoch, "steps": st.step, "wall_s": st.wall_seconds,
                   "samples_per_s": st.samples / st.train_seconds if st.train_seconds else None,
                   **self._sample_counts(), "num_processes": acc.num_processes}
        if acc.is_main_process:
            rundir.atomic_write_text(self.output_dir / rundir.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        acc.print(f"done: {_fmt(summary)}")
        self._publish(summary)
        return summary

    def _publish(self, summary: dict) -> None:
        """Hub folder, label-issue report and plots on the main process; the push comes last so a
        failed push leaves every local output written."""
        from .export import publish_run
        from .hub import push_folder

        acc, cfg = self.accelerator, self.cfg
        published = publish_run(self, summary, repo_id=cfg.hub.repo_id) if acc.is_main_process else None
        if published is not None and cfg.log.with_ == "wandb":
            import wandb

            acc.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in published.plots}, step=self.state.epoch)
        acc.end_training()
        if published is not None:
            acc.print(f"exported {published.hub_dir}; label report {published.label_issues}")
            if cfg.hub.repo_id:
                url = push_folder(published.hub_dir, cfg.hub.repo_id, private=cfg.hub.private,
                                  revision=cfg.hub.revision)
                acc.print(f"pushed to {url}")

    def _sample_counts(self) -> dict[str, int]:
        """Usable images per split (listed and labelled, minus unreadable ones) and the bad total."""
        sizes = {"train": len(self.data.train), **{name: len(ds) for name, (ds, _) in self.data.eval_sets.items()}}
        counts = {f"{name}_samples": size - self.bad_counts.get(name, 0) for name, size in sizes.items()}
        unlabelled = {"unlabelled": self.data.unlabelled} if self.data.unlabelled else {}
        return {**counts, "bad_images": sum(self.bad_counts.values()), **unlabelled}

    def _check_finite(self, losses: dict, epoch: int) -> None:
        """Stop before a non-finite loss reaches a checkpoint, naming the first bad term."""
        bad = [key for key, value in losses.items() if key != "loss" and not math.isfinite(value)]
        if bad or not math.isfinite(losses.get("loss", 0.0)):
            term = bad[0] if bad else "loss"
            kept = rundir.newest_intact(self.output_dir)
            raise TCLError(f"training diverged: {term} = {losses.get(term)} at step {self.state.step + 1} "
                           f"(epoch {epoch}); last good checkpoint: {kept or 'none'}; "
                           f"try a lower optim.lr")

    def _log(self, record: dict) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            rundir.append_metrics(self.output_dir, record)
        acc.log({k: v for k, v in record.items() if v is not None}, step=record["epoch"])
        acc.print(f"epoch {record['epoch']}/{self.cfg.train.epochs}: {_fmt(record)}")


def _fmt(record: dict) -> str:
    keys = ("test_acc", "val_acc", "imagenet_acc", "knn_acc", "noise_auc", "clean_ratio_est", "label_acc", "loss")
    text = "  ".join(f"{k} {record[k]:.4f}" for k in keys if isinstance(record.get(k), float))
    return text + (f"  bad_images {record['bad_images']}" if record.get("bad_images") else "")
