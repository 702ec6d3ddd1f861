"""The trainer: accelerate wiring, the loop, the EM step, evaluation and checkpoints.

``Trainer(cfg, accelerator).train()`` trains to the end (or to ``train.max_steps``) and returns the summary;
``.result(summary)`` hands the finished run to publishing (``tcl_hf.export``). The run folder's lock and the
tracker are the caller's (``tcl_hf.job``). ``detect_noise()`` and
``evaluate()`` also work on their own, e.g. after ``resume()``; only ``detect_noise`` changes state.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from . import rundir
from .config import Config, save_config, to_dict, warn_at_start_up
from .data import load_data, resolve_input_contract
from .distributed import any_process, build_accelerator, gather_equal, gather_with_grad
from .errors import StopRequested, TCLError
from .em import NoiseDetection
from .evaluation import format_record, knn_predict, topk_accuracy
from .feeding.feed import Feed
from .floats import tidy
from .fallback import go_back, keeps_checkpoint
from .health import HealthMonitor
from .methods import CrossEntropy, StepInputs, create_method, method_class
from .models import build_tcl_model
from .noise import training_labels
from .optim import build_optimizer
from .plan import start_line, total_batch
from .plus import start_from_tcl_run
from .result import RunResult, run_result
from .schedule import Schedule
from .state import LossMeter, RunState
from .stop import StopSignals


class Trainer:
    """Builds everything from a validated ``Config`` and runs TCL (or the CE baseline)."""

    def __init__(self, cfg: Config, accelerator: Accelerator | None = None):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        kind = method_class(cfg.method)  # its traits, read before the method (it needs the model) exists
        self.accelerator = acc = accelerator or build_accelerator(cfg)
        # Refuse a clash with another run before spending time on data or models (nothing is removed before the
        # new run is ready to train); the job holds the folder's lock.
        rundir.check_reuse(self.output_dir, cfg.train.resume, cfg.overwrite, to_dict(cfg))
        acc.wait_for_everyone()
        # Per process: each draws its own augmentations; DDP makes the model replicas equal anyway.
        set_seed(cfg.seed, device_specific=True)
        if acc.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick the fastest kernels
        self.stop = StopSignals(acc.print)
        warn_at_start_up(cfg, acc.print)
        contract = resolve_input_contract(cfg.data, cfg.model)
        # Each machine's first process decodes and caches; its others map the decoded files (data/decoded.py).
        with acc.local_main_process_first():
            self.data = load_data(cfg.data, contract, seed=cfg.seed, progress=acc.is_main_process and cfg.log.progress)
        if self.data.unlabelled:
            acc.print(f"left out {self.data.unlabelled} listed training image(s) without an entry in the label file")
        self.num_classes = self.data.num_classes
        given, self.clean_labels = training_labels(cfg.noise, self.data, cfg.seed)
        model = build_tcl_model(cfg.model, self.num_classes, sync_bn=cfg.train.sync_bn and acc.num_processes > 1
                                and acc.device.type == "cuda")
        start = start_from_tcl_run(cfg.init.from_, to_dict(cfg), model, given, cfg.plus.threshold) if (
            kind.starts_from_run) else None
        if start is not None:
            acc.print(start.describe(len(given)))
        if acc.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay,
                                    fused=acc.device.type == "cuda")
        self.feed = Feed(self.data, cfg, acc)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # Device-resident batches are all full, so the contrastive gather needs no sizes (and no host sync).
        gather = gather_equal if self.feed.on_device else gather_with_grad
        self.given_labels = given.to(acc.device)
        # What the steps train towards: the given labels, or TCL+'s relabelled ones.
        self.train_labels = start.relabelled.to(acc.device) if start is not None else self.given_labels
        self.method = create_method(cfg, gather if acc.num_processes > 1 else None, acc.unwrap_model(self.model),
                                    self.train_labels)
        self.state = RunState(len(self.data.train), self.num_classes, cfg.model.proj_dim)
        if start is not None:
            self.state.prototypes = start.prototypes
        self.steps_per_epoch = max(self.feed.train.steps(1) // cfg.train.grad_accum_steps, 1)
        # The phases and the lr of every step; it keeps its decisions in the run state (saved with checkpoints).
        self.schedule = Schedule(cfg, self.method, self.state, total_batch(cfg, acc.num_processes),
                                 self.steps_per_epoch, acc.print)
        self.em = NoiseDetection(cfg, self.method, self.feed, self.given_labels, self.clean_labels, self.state)
        self.health = HealthMonitor(cfg, self.method, self.schedule, self.state, self.num_classes, acc.print)
        self.bad_counts: dict[str, int] = {}
        self._resumed_from: Path | None = None

    # ---- training -----------------------------------------------------------------------------
    def _set_lr(self) -> float:
        lr = self.schedule.lr(self.state.step + 1)  # the step about to be taken
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _max_steps_reached(self) -> bool:
        return self.cfg.train.max_steps is not None and self.state.step >= self.cfg.train.max_steps

    def train_epoch(self, epoch: int, progress: tqdm | None = None) -> dict[str, float]:
        """One pass over the training set (or the rest of it after a mid-epoch resume); returns the epoch's
        mean loss terms and last lr. Raises ``StopRequested`` after saving a checkpoint on a stop signal."""
        cfg, acc, st = self.cfg, self.accelerator, self.state
        self.model.train()
        warmup = self.schedule.in_warmup(epoch)
        meter, lr, start = LossMeter(), self._set_lr(), time.perf_counter()
        for images, index in self.feed.train.epoch(epoch, st.batches_done):
            with acc.accumulate(self.model):
                lr = self._set_lr()
                confidences, prototypes = self.em.on_device
                batch = StepInputs(images, self.train_labels[index], confidences[index], prototypes, st.scale1,
                                   st.scale2, warmup)
                terms = self.method.step_terms(self.model, self.feed.views, batch)
                acc.backward(terms["loss"])
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if acc.sync_gradients:
                    self.method.after_step(self.model)
            meter.add(terms, st.step + 1)
            st.batches_done += 1
            st.samples += index.shape[0] * acc.num_processes
            if not acc.sync_gradients:
                continue
            st.step += 1
            if progress is not None:
                progress.update(1)
            # Reading the losses is the step's only wait for the device: every log.every steps.
            reading = st.step % cfg.log.every == 0
            if reading:
                self._read_losses(meter, epoch, progress, lr)
            # One process alone answers a signal at once; several agree on it when they read.
            if (self.stop.requested and acc.num_processes == 1) or (
                    reading and acc.num_processes > 1 and any_process(self.stop.requested is not None, acc)):
                self._read_losses(meter, epoch, progress, lr)
                st.train_seconds += time.perf_counter() - start
                raise StopRequested(self.save_checkpoint())
            if self._max_steps_reached():
                break
        self.method.sync_processes()
        self._read_losses(meter, epoch, progress, lr)
        st.train_seconds += time.perf_counter() - start
        keys, local = st.pop_loss_means()
        means = dict(zip(keys, acc.reduce(torch.tensor(local, device=acc.device), "mean").tolist())) if keys else {}
        return {**means, "lr": lr}

    def _read_losses(self, meter: LossMeter, epoch: int, progress, lr: float) -> None:
        """Bring the summed loss terms to the host; stop before a non-finite one reaches a checkpoint."""
        sums, first, bad_at = meter.read()
        if not sums:
            return
        bad = sorted((key for key, value in sums.items() if key != "loss" and not math.isfinite(value)), key=bad_at.get)
        if bad or not math.isfinite(sums["loss"]):
            term, last = (bad[0] if bad else "loss"), self.state.step
            where = f"at step {last}" if first == last else f"between steps {first} and {last}"
            kept = rundir.newest_intact(self.output_dir)
            raise TCLError(f"training diverged: {term} = {sums[term]} {where} (epoch {epoch}); last good "
                           f"checkpoint: {kept or 'none'}; try a lower optim.lr")
        self.state.add_loss_sums(sums)
        if progress is not None:
            progress.set_postfix(loss=f"{sums['loss'] / (self.state.step - first + 1):.3f}", lr=f"{lr:.4f}")

    # ---- EM step and evaluation ---------------------------------------------------------------
    def _network(self) -> torch.nn.Module:
        return self.method.network(self.accelerator.unwrap_model(self.model))  # TCL+: its teacher

    def detect_noise(self, epoch: int | None = None) -> dict[str, float | None]:
        """The EM step (see ``NoiseDetection.run``); returns the detection metrics."""
        metrics = self.em.run(self._network(), epoch)
        self.bad_counts["train"] = int(self.em.bad.sum())
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Top-1/top-5 accuracy of the classifier on every held-out set, and kNN accuracy on the test set of
        z voting with the given train labels. Unreadable images are left out; no training state changes."""
        model = self._network()
        bank, out = self.em.bank(model), {}
        for name, (feats, labels) in self.feed.extract_evals(model).items():
            self.bad_counts[name] = int(feats.bad.sum())
            good = ~feats.bad
            out.update(topk_accuracy(feats.p[good], labels[good], name))
            if name == "test":
                knn = knn_predict(feats.z[good], *bank, self.num_classes, self.cfg.eval.knn_k, self.cfg.eval.knn_t)
                out["knn_acc"] = float((knn == labels[good]).float().mean())
        return out

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Written aside with a manifest, then renamed: a half-written checkpoint is never picked up."""
        acc = self.accelerator

        def write(folder: Path) -> None:
            acc.save_state(str(folder))
            if acc.is_main_process:
                self.state.save(folder, self.method.state_tensors())

        return rundir.write_checkpoint(self.output_dir, self.state.step, write, self.cfg.train.checkpoints_to_keep,
                                       acc.is_main_process, acc.wait_for_everyone, pinned=self.state.before_tcl_step)

    def _load(self, folder: Path) -> None:
        self.accelerator.load_state(str(folder))
        self.method.load_state_tensors(self.state.load(folder))

    def resume(self) -> bool:
        """Load the newest complete and loadable checkpoint, naming any skipped; False when there is none."""
        acc = self.accelerator
        found, skipped = rundir.load_newest_checkpoint(self.output_dir, self._load, lambda f: any_process(f, acc))
        for note in skipped:
            acc.print(f"skipped checkpoint {note}")
        self._resumed_from = found
        self.em.restore()
        if self.state.fallback_from is not None:
            self._use_ce()
        return found is not None

    # ---- train.on_collapse=fallback --------------------------------------------------------------
    def _use_ce(self) -> None:
        """From now on the run trains and detects as the CE baseline (the schedule and the health monitor read the
        fallback from the run state)."""
        self.method = self.em.method = CrossEntropy(self.cfg.tcl)

    def _fall_back(self, line: str, progress: tqdm) -> None:
        """TCL collapsed: back to the checkpoint from before TCL began, on as CE (``tcl_hf/fallback.py``)."""
        acc, st = self.accelerator, self.state
        go_back(self.output_dir, st, self._load, lambda failed: any_process(failed, acc))
        self.em.restore()
        self._use_ce()
        acc.print(line)
        self.save_checkpoint()  # that checkpoint again, now with the fallback in its state
        if acc.is_main_process:
            rundir.remove_checkpoints_after(self.output_dir, st.step)
        acc.wait_for_everyone()
        progress.total += (st.collapsed_epoch - st.epoch) * self.steps_per_epoch  # the epochs to train again
        progress.refresh()

    # ---- the whole run --------------------------------------------------------------------------
    def train(self) -> dict:
        """Run the job to the end (or to train.max_steps) and write the run folder; returns the summary. SIGTERM
        and SIGINT stop it at the next step boundary with a checkpoint (raises StopRequested)."""
        with self.stop:
            return self._run()

    def _run(self) -> dict:
        cfg, acc, st = self.cfg, self.accelerator, self.state
        started = time.perf_counter()
        if acc.is_main_process:
            if cfg.overwrite and not cfg.train.resume:
                # The new run has its data and model: only now may the previous run's outputs go.
                rundir.clear_previous_outputs(self.output_dir)
            rundir.mark_run(self.output_dir, resumed=cfg.train.resume)
            save_config(cfg, self.output_dir / rundir.CONFIG_FILE)
        acc.wait_for_everyone()
        resumed = cfg.train.resume and self.resume()
        if cfg.train.resume:
            acc.print(f"resumed from {self._resumed_from} (epoch {st.epoch}, step {st.step})" if resumed
                      else f"no checkpoint in {self.output_dir}: starting from scratch")
            self.health.after_resume()  # a collapse recorded before the resume stays in force
            if acc.is_main_process:  # records after the checkpoint (all of them without one) will be redone
                rundir.trim_metrics(self.output_dir, st.epoch, st.fell_back_after())
        acc.print(start_line(cfg, len(self.data.train), self.num_classes, acc.num_processes))
        if not resumed:
            acc.print(f"initial EM step: {format_record(self.detect_noise())}")  # the confidences of epoch 1
        wall_before, record = st.wall_seconds, {}
        # smoothing=0: the rate averages over all the time since the bar began, EM steps and evaluations included.
        progress = tqdm(total=cfg.train.epochs * self.steps_per_epoch, initial=st.step, unit="step", smoothing=0,
                        disable=not (acc.is_main_process and cfg.log.progress), dynamic_ncols=True)
        if not resumed and keeps_checkpoint(cfg.train.on_collapse, self.schedule, 0):
            st.before_tcl_step = 0  # TCL from epoch 1: a fallback goes back to the start
            self.save_checkpoint()
        with progress:
            while st.epoch < cfg.train.epochs and not self._max_steps_reached():
                epoch = st.epoch + 1
                losses = self.train_epoch(epoch, progress)
                final = epoch == cfg.train.epochs or self._max_steps_reached()
                # The last EM step covers every sample (tcl.em_subset or not): the report, TCL+'s relabelling and
                # this epoch's one checkpoint all see the final model's verdict on the whole set.
                self.detect_noise(None if final else epoch)
                st.epoch = epoch
                record = self._record(epoch, losses, evaluate=final or epoch % cfg.eval.every == 0)
                usable = ~self.em.bad
                alarm = self.health.after_epoch(epoch, record, self.em.probs[usable].argmax(dim=1),
                                                self.given_labels[usable])
                self.schedule.after_epoch(epoch, record)  # may end an automatic warm-up, from the signals just added
                self._log(record)
                st.wall_seconds = wall_before + time.perf_counter() - started
                if alarm is not None and cfg.train.on_collapse == "fallback":
                    self._fall_back(alarm, progress)
                    record = {}
                    continue
                if keeps_checkpoint(cfg.train.on_collapse, self.schedule, epoch):
                    st.before_tcl_step = st.step  # this epoch's checkpoint is kept for a fallback
                self.health.respond(alarm, self.save_checkpoint())
        if not record:  # a resumed finished run: its checkpoint holds the last, full EM step; the record is redone
            self.detect_noise()
            record = self._record(st.epoch, {}, evaluate=True)
        st.wall_seconds = wall_before + time.perf_counter() - started
        summary = tidy({**record, "epochs_completed": st.epoch, "steps": st.step, "wall_s": st.wall_seconds,
                        "samples_per_s": st.samples / st.train_seconds if st.train_seconds else None,
                        **self.data.sample_counts(self.bad_counts), "num_processes": acc.num_processes,
                        **self.health.summary()})
        if acc.is_main_process:
            rundir.atomic_write_text(self.output_dir / rundir.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        acc.print(f"done: {format_record(summary)}")
        return summary

    def _record(self, epoch: int, losses: dict, evaluate: bool) -> dict:
        record = {"epoch": epoch, "step": self.state.step, **losses, **(self.evaluate() if evaluate else {}),
                  **self.em.metrics, "scale1": self.state.scale1, "scale2": self.state.scale2}
        if self.state.fallback_from is not None:
            record[rundir.FELL_BACK_KEY] = True
        bad = sum(self.bad_counts.values())
        return {**record, "bad_images": bad} if bad else record

    def _log(self, record: dict) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            rundir.append_metrics(self.output_dir, record)
        st = self.state  # after a fallback, epochs trained again follow the discarded ones on the tracker's axis
        redone = st.collapsed_epoch - st.fallback_from if st.fallback_from is not None else 0
        acc.log({k: v for k, v in record.items() if v is not None}, step=record["epoch"] + redone)
        acc.print(f"epoch {record['epoch']}/{self.cfg.train.epochs}: {format_record(record)}")

    # ---- after training -----------------------------------------------------------------------
    def result(self, summary: dict) -> RunResult:
        """The finished run for publishing: the trained model and the last EM step's verdict per sample."""
        if not self.em.metrics:
            raise TCLError("the run has no EM step to publish; train, or resume and call detect_noise() first")
        return run_result(self.output_dir, to_dict(self.cfg), summary, self._network(), self.state,
                          self.given_labels.cpu().numpy(), self.clean_labels, self.data.class_names,
                          self.data.contract, sample_id=self.data.train_ids(self.cfg.data.root or self.cfg.data.path),
                          images=self.data.train, trained=self.method.trained_labels)
