"""The trainer: accelerate wiring, the loop, the EM step, evaluation and checkpoints.

``Trainer(cfg).train()`` trains to the end (or to ``train.max_steps``) and returns the summary;
``.result(summary)`` hands the finished run to publishing (``tcl_hf.export``). ``detect_noise()`` and
``evaluate()`` also work on their own, e.g. after ``resume()``; only ``detect_noise`` changes state.
"""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from . import rundir
from .config import Config, flatten, save_config, to_dict
from .data import DataBundle, load_data, resolve_input_contract
from .data.loaders import make_loaders
from .detector import CLEAN_THRESHOLD
from .distributed import any_process, gather_with_grad
from .errors import StopRequested, TCLError
from .evaluation import detection_metrics, format_record, knn_predict, topk_accuracy
from .features import Features, extract
from .hub import check_push_token
from .methods import StepInputs, create_method
from .models import TCLModel, build_tcl_model
from .noise import training_labels
from .optim import build_optimizer, lr_at, scaled_lr
from .result import RunResult
from .state import RunState
from .views import Views


class Trainer:
    """Builds everything from a validated ``Config`` and runs TCL (or the CE baseline)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        check_push_token(cfg.hub.repo_id)  # a push bound to fail should stop the run now, not after training
        # The contrastive loss is skipped in CE mode, so DDP must tolerate the projector's unused weights.
        ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=cfg.method == "ce")
        self.accelerator = acc = Accelerator(
            mixed_precision=cfg.train.mixed_precision, gradient_accumulation_steps=cfg.train.grad_accum_steps,
            log_with="wandb" if cfg.log.with_ == "wandb" else None, project_dir=str(self.output_dir),
            # Seeded shuffling, so a resumed epoch sees the same order as an uninterrupted one.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
            kwargs_handlers=[ddp_kwargs])
        # One run per folder: take the lock, then refuse a clash with another run before spending time
        # on data or models (nothing is removed before the new run is ready to train).
        self._lock = rundir.lock_run_folder(self.output_dir, acc.is_main_process, lambda f: any_process(f, acc))
        rundir.check_reuse(self.output_dir, cfg.train.resume, cfg.overwrite, to_dict(cfg))
        acc.wait_for_everyone()
        set_seed(cfg.seed)
        self._stop_signal: int | None = None
        self.data = self._load_data()
        self.num_classes = self.data.num_classes
        given, self.clean_labels = training_labels(cfg.noise, self.data, cfg.seed, cfg.data.limit)
        model = build_tcl_model(cfg.model, self.num_classes, sync_bn=cfg.train.sync_bn and acc.num_processes > 1
                                and acc.device.type == "cuda")
        optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay)
        train_loader, train_eval_loader, eval_loaders = make_loaders(self.data, cfg.train, cfg.data.num_workers,
                                                                     acc.num_processes, cfg.seed)
        prepared = acc.prepare(model, optimizer, train_loader, train_eval_loader, *eval_loaders.values())
        self.model, self.optimizer, self.train_loader, self.train_eval_loader = prepared[:4]
        self.eval_loaders = dict(zip(eval_loaders, prepared[4:]))
        contract = self.data.contract
        self.views = Views(contract.size, contract.mean, contract.std, cfg.aug.crop_padding,
                           cfg.aug.strong_scale_min, cfg.aug.hflip, storage_size=contract.storage_size).to(acc.device)
        self.method = create_method(cfg, gather_with_grad if acc.num_processes > 1 else None)
        self.given_labels = given.to(acc.device)
        self.eval_labels = {name: torch.as_tensor(labels, device=acc.device)
                            for name, (_, labels) in self.data.eval_sets.items()}
        self.bad_counts: dict[str, int] = {}
        self.state = RunState(len(self.data.train), self.num_classes, cfg.model.proj_dim)
        self.total_batch = cfg.train.batch_size * acc.num_processes * cfg.train.grad_accum_steps
        self.peak_lr = scaled_lr(cfg.optim.lr, self.total_batch, cfg.optim.scale_lr)
        self.steps_per_epoch = max(len(self.train_loader) // cfg.train.grad_accum_steps, 1)
        self.train_features: Features | None = None  # the last EM step's extraction (kNN bank, predictions)
        self._last_em: dict = {}
        self._resumed_from: Path | None = None
        self._on_device: tuple[torch.Tensor, torch.Tensor] | None = None  # confidences and prototypes for the steps

    # ---- construction -------------------------------------------------------------------------
    def _load_data(self) -> DataBundle:
        contract = resolve_input_contract(self.cfg.data, self.cfg.model)
        # Decoding happens once per machine; the main process goes first so datasets' cache is warm.
        with self.accelerator.main_process_first():
            data = load_data(self.cfg.data, contract, seed=self.cfg.seed)
        if data.unlabelled:
            self.accelerator.print(f"left out {data.unlabelled} listed training image(s) without an entry in the "
                                   f"label file")
        return data

    # ---- training -----------------------------------------------------------------------------
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
        """One pass over the training set (or the rest of it after a mid-epoch resume); returns the epoch's
        mean loss terms and last lr. Raises ``StopRequested`` after saving a checkpoint on a stop signal."""
        cfg, acc, st = self.cfg, self.accelerator, self.state
        self.model.train()
        self.train_loader.set_epoch(epoch)
        if self.data.train_sampler is not None:
            self.data.train_sampler.set_epoch(epoch)
        # The sampler's order is fixed by (seed, epoch), so skipping reproduces the rest of the epoch.
        loader = acc.skip_first_batches(self.train_loader, st.batches_done) if st.batches_done else self.train_loader
        warmup = epoch < cfg.optim.warmup_epochs
        lr = self._set_lr()
        start = time.perf_counter()
        for images, index, ok in loader:
            if not bool(ok.all()) and int(ok.sum()) >= 2:
                # Unreadable images were handed out as zeros: leave them out of the step.
                images, index = images[ok], index[ok]
            with acc.accumulate(self.model):
                lr = self._set_lr()
                confidences, prototypes = self._on_device
                batch = StepInputs(images, self.given_labels[index], confidences[index], prototypes, st.scale1,
                                   st.scale2, warmup)
                terms = self.method.step_terms(self.model, self.views, batch)
                acc.backward(terms["loss"])
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            values = dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))
            self._check_finite(values, epoch)
            st.add_losses(values)
            st.samples += images.shape[0] * acc.num_processes
            if acc.sync_gradients:
                st.step += 1
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.4f}")
                if any_process(self._stop_signal is not None, acc):
                    st.train_seconds += time.perf_counter() - start
                    raise StopRequested(self.save_checkpoint())
            if self._max_steps_reached():
                break
        st.train_seconds += time.perf_counter() - start
        keys, local = st.pop_loss_means()
        means = dict(zip(keys, acc.reduce(torch.tensor(local, device=acc.device), "mean").tolist())) if keys else {}
        return {**means, "lr": lr}

    def _check_finite(self, losses: dict, epoch: int) -> None:
        """Stop before a non-finite loss reaches a checkpoint, naming the first bad term."""
        bad = [key for key, value in losses.items() if key != "loss" and not math.isfinite(value)]
        if bad or not math.isfinite(losses.get("loss", 0.0)):
            term = bad[0] if bad else "loss"
            kept = rundir.newest_intact(self.output_dir)
            raise TCLError(f"training diverged: {term} = {losses.get(term)} at step {self.state.step + 1} "
                           f"(epoch {epoch}); last good checkpoint: {kept or 'none'}; try a lower optim.lr")

    # ---- EM step and evaluation ---------------------------------------------------------------
    def _extract(self, loader, num_samples: int) -> Features:
        return extract(self.accelerator.unwrap_model(self.model), loader, self.views.test, num_samples,
                       self.cfg.model.proj_dim, self.num_classes, self.accelerator)

    def detect_noise(self) -> dict[str, float | None]:
        """The EM step over the whole training set: updates confidences, prototypes and scales, and returns
        the detection metrics. Unreadable images take no part and get confidence 0."""
        cfg, st = self.cfg, self.state
        feats = self._extract(self.train_eval_loader, len(self.data.train))
        self.bad_counts["train"] = int(feats.bad.sum())
        good, labels = ~feats.bad, self.given_labels
        found = self.method.detect(feats.z[good], feats.p[good], labels[good])
        confidences = torch.zeros(len(labels), device=feats.z.device)
        confidences[good] = found.confidences
        if found.prototypes is not None:
            assignments = torch.zeros_like(feats.p)
            assignments[good] = found.assignments
            st.prototypes, st.assignments = found.prototypes.cpu(), assignments.cpu()
        st.confidences = confidences.cpu()
        self._on_device = (confidences, st.prototypes.to(confidences.device))
        clean_ratio = float((confidences[good] > CLEAN_THRESHOLD).float().mean())
        # Reference quirk kept: unset scales follow the estimated *clean* fraction.
        st.scale1 = cfg.tcl.scale1 if cfg.tcl.scale1 is not None else clean_ratio
        st.scale2 = cfg.tcl.scale2 if cfg.tcl.scale2 is not None else clean_ratio
        self.train_features = feats
        keep = good.cpu().numpy()
        clean = self.clean_labels[keep] if self.clean_labels is not None else None
        self._last_em = detection_metrics(st.confidences.numpy()[keep], labels.cpu().numpy()[keep], clean,
                                          feats.p.argmax(dim=1).cpu().numpy()[keep])
        return self._last_em

    def evaluate(self) -> dict[str, float]:
        """Top-1/top-5 accuracy of the classifier on every held-out set, and kNN accuracy on the test set of
        z voting with the given train labels. Unreadable images are left out; no training state changes."""
        train = self.train_features or self._extract(self.train_eval_loader, len(self.data.train))
        out = {}
        for name, loader in self.eval_loaders.items():
            labels = self.eval_labels[name]
            feats = self._extract(loader, len(labels))
            self.bad_counts[name] = int(feats.bad.sum())
            good = ~feats.bad
            out.update(topk_accuracy(feats.p[good], labels[good], name))
            if name == "test":
                bank = ~train.bad
                knn = knn_predict(feats.z[good], train.z[bank], self.given_labels[bank], self.num_classes,
                                  self.cfg.eval.knn_k, self.cfg.eval.knn_t)
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

        found, skipped = rundir.load_newest_checkpoint(self.output_dir, load, lambda f: any_process(f, acc))
        for note in skipped:
            acc.print(f"skipped checkpoint {note}")
        self.train_features, self._resumed_from = None, found
        self._on_device = (self.state.confidences.to(acc.device), self.state.prototypes.to(acc.device))
        return found is not None

    # ---- the whole run --------------------------------------------------------------------------
    def train(self) -> dict:
        """Run the job to the end (or to train.max_steps) and write the run folder; returns the summary.

        SIGTERM/SIGINT stop it at the next step boundary with a checkpoint (raises StopRequested).
        """
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._run()
        except BaseException:
            self.close()  # a stopped or failed run is over: free the folder for the resume
            raise
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # a second signal means "now"
        self._stop_signal = signum
        self.accelerator.print(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step "
                               f"(send again to stop at once)")

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
        if cfg.train.resume and self.resume():
            acc.print(f"resumed from {self._resumed_from} (epoch {st.epoch}, step {st.step})")
            if acc.is_main_process:
                rundir.trim_metrics(self.output_dir, st.epoch)
        else:
            if cfg.train.resume:
                acc.print(f"no checkpoint in {self.output_dir}: starting from scratch")
            acc.print(f"initial EM step: {format_record(self.detect_noise())}")  # the confidences of epoch 1
        wall_before, record = st.wall_seconds, {}
        progress = tqdm(total=cfg.train.epochs * self.steps_per_epoch, initial=st.step, unit="step",
                        disable=not (acc.is_main_process and cfg.log.progress), dynamic_ncols=True)
        with progress:
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
        if not record:
            # Nothing left to train (resumed a finished run, or max_steps already reached).
            if self.train_features is None:
                self.detect_noise()
            record = self._record(st.epoch, {})
        st.wall_seconds = wall_before + time.perf_counter() - started
        summary = {**record, "epochs_completed": st.epoch, "steps": st.step, "wall_s": st.wall_seconds,
                   "samples_per_s": st.samples / st.train_seconds if st.train_seconds else None,
                   **self._sample_counts(), "num_processes": acc.num_processes}
        if acc.is_main_process:
            rundir.atomic_write_text(self.output_dir / rundir.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        acc.print(f"done: {format_record(summary)}")
        return summary

    def _record(self, epoch: int, losses: dict) -> dict:
        record = {"epoch": epoch, "step": self.state.step, **losses, **self.evaluate(), **self._last_em,
                  "scale1": self.state.scale1, "scale2": self.state.scale2}
        bad = sum(self.bad_counts.values())
        return {**record, "bad_images": bad} if bad else record

    def _sample_counts(self) -> dict[str, int]:
        """Usable images per split (listed and labelled, minus unreadable ones) and the bad total."""
        sizes = {"train": len(self.data.train), **{name: len(ds) for name, (ds, _) in self.data.eval_sets.items()}}
        counts = {f"{name}_samples": size - self.bad_counts.get(name, 0) for name, size in sizes.items()}
        unlabelled = {"unlabelled": self.data.unlabelled} if self.data.unlabelled else {}
        return {**counts, "bad_images": sum(self.bad_counts.values()), **unlabelled}

    def _log(self, record: dict) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            rundir.append_metrics(self.output_dir, record)
        acc.log({k: v for k, v in record.items() if v is not None}, step=record["epoch"])
        acc.print(f"epoch {record['epoch']}/{self.cfg.train.epochs}: {format_record(record)}")

    # ---- after training -----------------------------------------------------------------------
    def result(self, summary: dict) -> RunResult:
        """The finished run for publishing: the trained model and the last EM step's verdict per sample."""
        if self.train_features is None:
            raise TCLError("the run has no EM step to publish; train, or resume and call detect_noise() first")
        keep = ~self.train_features.bad.cpu().numpy()
        clean = self.clean_labels[keep] if self.clean_labels is not None else None
        model: TCLModel = self.accelerator.unwrap_model(self.model)
        return RunResult(output_dir=self.output_dir, config=to_dict(self.cfg), summary=summary, model=model,
                         prototypes=self.state.prototypes, index=keep.nonzero()[0],
                         given=self.given_labels.cpu().numpy()[keep],
                         predicted=self.train_features.p.argmax(dim=1).cpu().numpy()[keep],
                         clean_prob=self.state.confidences.cpu().numpy()[keep], clean=clean,
                         class_names=self.data.class_names, contract=self.data.contract)

    def close(self, plots: list[Path] = ()) -> None:
        """Send the run's plots to the tracker, end tracking and release the run folder."""
        if plots and self.cfg.log.with_ == "wandb":
            import wandb

            self.accelerator.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}, step=self.state.epoch)
        self.accelerator.end_training()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

