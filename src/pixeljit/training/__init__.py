"""Training: typed configs (`config`) and named recipes (`presets`), the loop read top to bottom
(`loop`), its set-up (`setup`: batch plan, data), checkpoint state and RNG (`state`), sample grids
(`previews`), EMAs (`ema`), torchrun / DDP / FSDP2 (`distributed`), the run log (`runlog`),
run-folder safety (`rundir`: lock, refuse overwrite, move aside, temp sweep) and what may change on
resume (`resume`). Import `pixeljit.training.loop.train` to run one."""
