"""Training: typed configs and presets (`config`), the loop read top to bottom (`loop`), its set-up
and checkpoint state (`state`), EMAs (`ema`), torchrun / DDP / FSDP2 (`distributed`) and the run
log (`runlog`). Import `pixeljit.training.loop.train` to run one."""
