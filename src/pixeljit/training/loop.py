"""The training loop, read top to bottom.

One process on a CPU or a GPU, or every rank under `torchrun` (DDP, or FSDP2 for models that do
not fit). Exactly resumable: the data order is a function of (seed, epoch, position), and every
random draw of step s (labels dropped, t, ε, dropout masks) comes from generators seeded by
(seed, s, chunk), where chunk = accumulation index × world_size + rank names the slice of the
global batch. So N steps straight equal k steps + resume + N − k steps, bit for bit, and one
process with gradient accumulation sees the same samples and noise as W processes without.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pixeljit.checkpoints.run import find_checkpoint, load_checkpoint, run_folder, save_checkpoint
from pixeljit.data.loader import DeviceLoader
from pixeljit.data.packed import PackedDataset
from pixeljit.diffusion.execution import matmul_precision
from pixeljit.diffusion.objective import flow_matching_loss
from pixeljit.model import JiT
from pixeljit.rng import derive_seed
from pixeljit.training import distributed as dist_utils
from pixeljit.training.branches import aside_suffix, revive_branch, set_aside_newer
from pixeljit.training.config import TrainConfig, resolve_compile
from pixeljit.training.config_io import from_dict, save_yaml, to_dict
from pixeljit.training.ema import EMA
from pixeljit.training.finals import draw_missing_finals
from pixeljit.training.optimizer import build_adamw
from pixeljit.training.previews import sample_grid
from pixeljit.training.resume import (
    DATA_KEY,
    check_resume,
    data_fingerprint,
    execution_facts,
    with_added_fields,
)
from pixeljit.training.resume_early import check_resume_before_data
from pixeljit.training.rundir import (
    CONFIG_FILE,
    RunLock,
    check_config_file,
    check_out_folder,
    prepare_fresh,
    sweep_temporaries,
)
from pixeljit.training.runlog import LOSS_PLOT, METRICS_FILE, LossTally, RunLog, plot_loss
from pixeljit.training.setup import BatchPlan, nothing_to_train, open_training_data, resolve_config
from pixeljit.training.state import all_finite, capture_rng, gather_state, load_training_state
from pixeljit.training.stopsignal import StopRequest
from pixeljit.training.summary import progress_bar, start_report


@dataclass
class TrainResult:
    step: int  # the run's step: its checkpoint's (a non-finite stop: the last good one's, or 0)
    out: Path
    checkpoint: Path | None
    final_loss: float | None
    stopped_on_nan: bool = False
    is_main: bool = True  # rank 0 (the one that writes files and reports)
    stopped_by_signal: int | None = None  # SIGINT / SIGTERM: stopped early, with a checkpoint
    nan_step: int | None = None  # a non-finite stop: the first step (from 1) found not finite


STEP_NOISE_TAG = 0x70786A74  # 'pxjt': keeps step noise apart from other streams


def step_seed(seed: int, step: int, chunk: int) -> int:
    return derive_seed(seed, step, chunk, STEP_NOISE_TAG)


def learning_rate(
    step: int, base: float, warmup_steps: int, total_steps: int = 0, cooldown_steps: int = 0
) -> float:
    """Per-iteration linear warm-up to `base`, then constant: the authors' schedule, where step
    k (from 0) of a warm-up of W steps takes base·k/W (their first step is taken at rate 0: it
    fills AdamW's moments and moves no weight) and step W on the full rate. With
    `cooldown_steps` > 0 the last that many steps of `total_steps` fall linearly towards 0 (the
    last step still moves: its rate is base / cooldown_steps)."""
    factor = 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
    if cooldown_steps > 0:
        factor = min(factor, (total_steps - step) / cooldown_steps)
    return base * factor


def train(
    cfg: TrainConfig | dict,
    resume: str | None = None,
    progress: bool = True,
    restart: bool = False,
    allow_inexact_resume: bool = False,
) -> TrainResult:
    """Train `cfg` into the folder `cfg.run.out`, which rank 0 locks for the whole run. Fresh
    (no `resume`): the folder must not hold a run, unless `restart` moves it aside. `resume`: a run
    folder or checkpoint file; the run continues in that folder, which must be `cfg.run.out`.
    A dict of sections ({'run': {'out': ...}, ...}) is read as `config_io.from_dict` reads it."""
    if isinstance(cfg, dict):  # every field checked by its dotted name; a resumed dict lacking a
        cfg = from_dict(with_added_fields(cfg) if resume else cfg)  # new field: its old sense
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig or a dict of its sections, got a "
                         f"{type(cfg).__name__}: e.g. presets.get_preset(name)")  # fmt: skip
    if resume is not None and restart:
        raise ValueError("--restart starts a fresh run; it cannot be combined with --resume")
    out = Path(cfg.run.out)
    if resume is not None:  # the folder is locked before its checkpoint is looked for
        folder = run_folder(resume) if Path(resume).exists() else find_checkpoint(resume).parent
        if out.resolve() != folder.resolve():
            find_checkpoint(resume)  # "holds no checkpoint" first: the likelier mistake
            raise ValueError(
                f"--resume {resume} continues in its own folder {folder}, not in the "
                f"output folder {out} (--out / run.out); drop --out or set it to "
                f"{folder} (to branch a run, copy its folder and resume the copy)"
            )
    check_out_folder(out, cfg.data.source)
    info = dist_utils.setup(cfg.run.device)
    lock = RunLock(out) if info.is_main else None
    fresh = resume is None and not restart
    dist_utils.rank0_first(info, lambda: _open_run_folder(lock, out, fresh), "locking its folder")
    try:
        resume_file = find_checkpoint(resume) if resume is not None else None
        with matmul_precision(cfg.run.matmul_precision):  # restored after, as it was
            return _train(cfg, resume_file, progress, allow_inexact_resume, info, restart)
    finally:
        if lock is not None:
            lock.release()


def _open_run_folder(lock: RunLock, out: Path, fresh: bool) -> None:
    lock.acquire()
    try:
        swept = sweep_temporaries(out)
        if swept:
            print(f"removed {len(swept)} temporary file(s) of an interrupted write in {out}")
        if fresh:
            prepare_fresh(out, restart=False)  # refuses a folder holding a run
    except BaseException:
        lock.release()
        raise


def _settle_run_folder(out: Path, resume_file: Path | None, restart: bool, saved, cfg) -> None:
    """Rank 0, once the data, the config and the resume check passed: refuse an edited
    config.yaml, move an old run aside (`restart`) or keep what the folder holds past the
    resumed step (a newer latest.pt, milestones, sample grids, metrics), which the resumed run
    would overwrite or mix with; then write the run's config.yaml."""
    check_config_file(out, saved, to_dict(cfg))  # before anything in the folder moves
    if resume_file is None:
        aside = prepare_fresh(out, restart, to_dict(cfg))
        if aside is not None:
            print(f"moved the previous run in {out} aside to {aside}")
    else:
        _keep_later_files(out, resume_file, saved["step"])
    save_yaml(cfg, out / CONFIG_FILE)


def _keep_later_files(out: Path, resume_file: Path, step: int) -> None:
    """Set aside what the folder holds past the resumed `step`, saying what was kept where."""
    if aside_suffix(resume_file) is not None:  # a branch an earlier resume set aside
        start, kept = revive_branch(out, resume_file, step)
        later = f"this folder's own files past step {start}, where that branch parts from it,"
    else:
        kept, later = set_aside_newer(out, resume_file, step), "the folder's later files"
    if kept:
        shown = ", ".join(p.name for p in kept)
        print(f"resuming from {resume_file.name} (step {step}): {later} are kept as {shown}")


@dataclass
class _Run:
    """What the data, the config and the resume check settled, the same on every rank."""

    cfg: TrainConfig
    plan: BatchPlan
    dataset: PackedDataset
    out: Path
    compiled: bool
    execution: dict
    fingerprint: dict | None
    saved: dict | None  # the checkpoint resumed from
    inexact_ok: bool = False  # --allow-inexact-resume: the data may have changed size


@dataclass
class _Parts:
    """The trainable state and what drives it."""

    raw: JiT  # the bare model: what the EMA, the checkpoints and the previews see
    model: torch.nn.Module  # `raw` wrapped for DDP / FSDP2 (or `raw` itself)
    forward: Callable  # `model`, compiled where configured
    ema: EMA
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    loader: DeviceLoader
    autocast: contextlib.AbstractContextManager


def _prepare(cfg: TrainConfig, resume_file, allow_inexact: bool, info, restart, progress) -> _Run:
    """Open the data, resolve the config, check a resume against it; rank 0 settles the folder
    (not when a resume has nothing to train: then only a missing final grid / plot is drawn)."""
    saved = load_checkpoint(resume_file) if resume_file is not None else None
    if saved is not None:  # a changed recipe or classes: refused before the data is packed
        check_resume_before_data(saved, cfg, allow_inexact)
    dataset = open_training_data(cfg, info, progress)
    cfg, plan = resolve_config(cfg, dataset, info)
    out = Path(cfg.run.out)
    compiled = resolve_compile(cfg.run.compile, info.device.type)
    execution = execution_facts(plan, info, cfg.run.distributed, compiled,
                                cfg.run.activation_checkpointing, cfg.run.fsdp_bf16_params,
                                cfg.run.bf16_residual, cfg.run.matmul_precision)  # fmt: skip
    fingerprint = data_fingerprint(dataset)
    idle = nothing_to_train(saved, plan)  # a resume at or past the steps asked for
    if saved is not None:
        inexact = check_resume(saved, to_dict(cfg), execution, saved["path"], allow_inexact,
                               fingerprint, plan.total_steps)  # fmt: skip
        if inexact and info.is_main:
            print("resuming inexactly (the run will not match an uninterrupted one bit for bit): "
                  + "; ".join(inexact), flush=True)  # fmt: skip
    for line in start_report(cfg, plan, dataset, saved, resume_file) if info.is_main else ():
        print(line, flush=True)
    if not idle:  # rank 0 writes; its refusal (an edited config.yaml) stops every rank cleanly
        settle = lambda: _settle_run_folder(out, resume_file, restart, saved, cfg)  # noqa: E731
        dist_utils.rank0_first(info, settle, "setting up its folder")
    return _Run(cfg, plan, dataset, out, compiled, execution, fingerprint, saved, allow_inexact)


def _build(run: _Run, info) -> tuple[_Parts, int]:
    """Model, EMA, optimiser and loader, restored from the checkpoint if resuming; and the step."""
    cfg, device = run.cfg, info.device
    torch.manual_seed(cfg.run.seed)
    raw = JiT(cfg.model).to(device)  # (same init on every rank: same seed)
    raw.checkpoint_blocks = cfg.run.activation_checkpointing
    raw.bf16_residual = cfg.run.bf16_residual
    # FSDP2 shards raw in place
    model = dist_utils.wrap_model(raw, info, cfg.run.distributed, cfg.run.fsdp_bf16_params)
    # after sharding: each rank averages its own shard
    ema = EMA(raw, cfg.optim.ema_decays, warmup=cfg.optim.ema_warmup,
              warmup_offset=cfg.optim.ema_warmup_offset)  # fmt: skip
    params = [p for p in raw.parameters() if p.requires_grad]
    opt = build_adamw(params, cfg.optim.learning_rate, cfg.optim.betas, cfg.optim.weight_decay,
                      cfg.optim.decay_1d)  # fmt: skip
    loader = DeviceLoader(
        run.dataset,
        run.plan.micro_batch * info.world_size,  # one micro-step of every rank
        device=device,
        seed=cfg.run.seed,
        rank=info.rank,
        world_size=info.world_size,
        flip=cfg.data.flip,
        epoch_batch=run.plan.global_batch,  # an epoch ends where a whole step does not fit
    )
    step = 0
    if run.saved is not None:
        step = load_training_state(run.saved, raw, ema, opt, loader, info, cfg.run.distributed,
                                   run.inexact_ok)  # fmt: skip
    # static shapes: the micro-batch is fixed, so one graph serves every step (no recompiles)
    forward = torch.compile(model, dynamic=False) if run.compiled else model
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if run.plan.bf16
        else contextlib.nullcontext()
    )
    return _Parts(raw, model, forward, ema, params, opt, loader, autocast), step


def _train(cfg: TrainConfig, resume_file, progress: bool, allow_inexact: bool, info, restart):
    run = _prepare(cfg, resume_file, allow_inexact, info, restart, progress)
    if nothing_to_train(run.saved, run.plan):  # no model trained; only a missing end drawn
        done, step = Path(run.saved["path"]), run.saved["step"]
        drawn = draw_missing_finals(run.cfg, done, step, info.device) if info.is_main else []
        if drawn:
            print(f"drew what the run had not written at its end: "
                  f"{', '.join(p.name for p in drawn)}", flush=True)  # fmt: skip
        dist_utils.teardown()
        return TrainResult(step, run.out, done, None, is_main=info.is_main)
    parts, step = _build(run, info)
    cfg, plan, out = run.cfg, run.plan, run.out
    log = RunLog(out, enabled=info.is_main, tensorboard=cfg.run.tensorboard)
    log.truncate_after(step)
    tally = LossTally(info.device)
    last_ckpt = Path(run.saved["path"]) if run.saved is not None else None  # the last good one
    kept = step  # the step of the last good checkpoint (where a resume continues)
    final_loss, nan_step, interrupted = None, None, None
    bar = progress_bar(progress and info.is_main, step, plan.total_steps)
    parts.model.train()
    # the bar closes (its line ends) before any error of the loop is printed
    closing = bar if bar is not None else contextlib.nullcontext()
    with StopRequest(enabled=info.world_size == 1) as stop, closing:
        while step < plan.total_steps:
            lr = learning_rate(step, cfg.optim.learning_rate, plan.warmup_steps, plan.total_steps,
                               plan.cooldown_steps)  # fmt: skip
            step_loss = _optimizer_step(parts, run, info, step, lr, tally)
            tally.end_step(step, step_loss, plan.global_batch)
            step += 1
            if bar is not None:
                bar.update(1)

            # -------------------------------------------- log / checkpoint / sample (host syncs)
            last = step == plan.total_steps
            stopping = stop.signal is not None and not last  # Ctrl-C / SIGTERM: save, return
            regular = step % cfg.run.ckpt_every == 0 or cfg.run.keeps_milestone(step)
            due_ckpt = regular or last or stopping
            due_sample = last or (cfg.sample.every and step % cfg.sample.every == 0)
            if step % cfg.run.log_every == 0 or due_ckpt or due_sample:
                bad_step = tally.first_bad_step(info)
                if bad_step >= 0:
                    nan_step = bad_step
                    _say_stopped(info, f"non-finite loss at step {bad_step + 1}", last_ckpt)
                    break
                record = tally.flush(step, plan, lr, info)
                final_loss = record["loss"]
                log.write(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                                    img_s=f"{record['img_per_s']:.0f}")  # fmt: skip
            if due_ckpt:
                # a finite loss can still end in NaN weights
                if not all_finite(parts.raw, parts.ema, parts.opt, info):
                    nan_step = step - 1
                    _say_stopped(info, f"non-finite weights after step {step}", last_ckpt)
                    break
                written, kept = _save(run, parts, info, step), step
                last_ckpt = written or last_ckpt
            if stopping:
                interrupted = stop.signal
                _say_stopped(info, f"stopped after step {step} of {plan.total_steps}", last_ckpt)
                break
            if due_sample:
                sample_grid(cfg, parts.ema, run.dataset, out / f"samples-{step:07d}.png", info,
                            info.device)  # fmt: skip
    if info.is_main and (out / METRICS_FILE).is_file():
        plot_loss(out / METRICS_FILE, out / LOSS_PLOT)
    log.close()
    dist_utils.teardown()
    bad = None if nan_step is None else nan_step + 1
    return TrainResult(step if bad is None else kept, out, last_ckpt, final_loss, bad is not None,
                       info.is_main, interrupted, bad)  # fmt: skip


def _optimizer_step(parts: _Parts, run: _Run, info, step: int, lr: float, tally: LossTally):
    """One step: forward and backward over every micro-batch (gradients synced on the last),
    clip, AdamW, EMA. Returns the step's mean loss, a device scalar (no host sync)."""
    cfg, plan, device = run.cfg, run.plan, info.device
    num_classes = cfg.model.num_classes
    for group in parts.opt.param_groups:
        group["lr"] = lr
    step_loss = torch.zeros((), device=device)
    for micro in range(plan.accumulation):
        x, y = next(parts.loader)  # (B, C, H, W) in [-1, 1], (B,)
        chunk = micro * info.world_size + info.rank
        gen = torch.Generator(device=device).manual_seed(step_seed(cfg.run.seed, step, chunk))
        torch.manual_seed(step_seed(cfg.run.seed, step, chunk) ^ 1)  # dropout masks
        sync = micro == plan.accumulation - 1
        no_sync = getattr(parts.model, "no_sync", None)
        ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with ctx, parts.autocast:
            labels = y if num_classes > 0 else None
            per_sample, t = flow_matching_loss(
                parts.forward, x, labels, cfg.objective, num_classes, gen
            )  # (B,), (B,)
            loss = per_sample.float().mean() / plan.accumulation
        loss.backward()
        step_loss += loss.detach()
        tally.add_losses(per_sample, t)
    if cfg.optim.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(parts.params, cfg.optim.grad_clip)
    parts.opt.step()
    parts.opt.zero_grad(set_to_none=True)
    parts.ema.update(parts.raw, updates=step)  # `step` updates came before this one
    return step_loss


def _save(run: _Run, parts: _Parts, info, step: int) -> Path | None:
    """Checkpoint after `step` (every rank gathers; rank 0 writes and returns the path)."""
    cfg, plan = run.cfg, run.plan
    state = gather_state(parts.raw, parts.ema, parts.opt, parts.loader, info, cfg.run.distributed)
    written = None
    if info.is_main:
        state.update(step=step, images_seen=step * plan.global_batch, config=to_dict(cfg),
                     rng=capture_rng(), execution=run.execution,
                     class_names=list(run.dataset.class_names))  # fmt: skip
        if run.fingerprint is not None:
            state[DATA_KEY] = run.fingerprint
        written = save_checkpoint(state, run.out, step, cfg.run.keeps_milestone(step))
    dist_utils.barrier(info)
    return written


def _say_stopped(info, what: str, last_ckpt: Path | None) -> None:
    if info.is_main:
        print(f"\n{what}: training stopped; the last good checkpoint is "
              f"{last_ckpt or 'none (none was written yet)'}", flush=True)  # fmt: skip
