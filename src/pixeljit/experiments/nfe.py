"""Quality against network evaluations (NFE): every solver × time grid × budget, one checkpoint.

For each (solver, grid, NFE budget) the study samples `num` images with the library's own
generate-and-score pass (`pixeljit.evaluation.evaluate`, the code behind `pixeljit eval`) at
matched seeds: sample k has class k mod K and noise from seed (seed, k) in every row, so rows
differ only by the solver and its grid. Scores: FD (the extractor's), class accuracy when the
extractor classifies the model's labels (Fashion-MNIST), precision and recall (k-NN manifolds of
`num` generated against `num` real features drawn once with a fixed seed: equal sizes, as
Kynkäänniemi et al. recommend; FD uses the full data set's moments).

NFE counts the solver's network evaluations per image (Heun-50: 99). Guided evaluations (t in
the CFG interval, cfg ≠ 1) run the conditional and unconditional rows in one batched pass, so
each costs two rows of compute: `rows_per_image` reports that cost for every row.

Results go to OUT/nfe.json after every row (atomically), so an interrupted study resumes: rows of
an earlier run with the same settings are kept. A folder holding a study with other settings
is refused unless `overwrite` (then its results are replaced).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pixeljit.checkpoints.provenance import weights_digest
from pixeljit.diffusion.guidance import check_interval
from pixeljit.diffusion.sampler import PAPER_INTERVAL, SAMPLE_T_EPS, SamplerConfig
from pixeljit.diffusion.solvers import (
    DEFAULT_SHIFT,
    GRIDS,
    METHODS,
    evaluations,
    steps_for,
)
from pixeljit.files.atomic import atomic_write_text
from pixeljit.metrics.score import ScoreConfig
from pixeljit.values import is_integer

RESULTS_NAME = "nfe.json"
FORMAT = "pixeljit.nfe/1"
PAPER_BUDGETS = (4, 6, 8, 10, 15, 20, 30, 50, 100)  # NFE budgets of the full study
HEUN_FEWEST_NFE = evaluations("heun", 2)  # 3: one Heun step is an Euler step
QUICK_BUDGETS = (2, 4)
QUICK_NUM = 16
DEFAULT_NUM = 1000
DEFAULT_CFG = 2.0  # for a model that recommends no sampler (fmnist-cpu previews at 2.0)
FEW_NFE = 20  # the goal: a solver at ≤ 20 NFE …
MANY_NFE = 100  # … within FD_TOLERANCE of the best FD at ≤ 100 NFE
FD_TOLERANCE = 0.05
METRICS = ("fd", "pr")  # what each row scores


@dataclass(frozen=True)
class NfeConfig:
    """What to sweep (methods × grids × budgets) and how to sample and score each row."""

    methods: tuple[str, ...] = METHODS
    grids: tuple[str, ...] = GRIDS
    budgets: tuple[int, ...] = PAPER_BUDGETS
    num: int = DEFAULT_NUM
    seed: int = 0
    cfg: float = DEFAULT_CFG
    interval: tuple[float, float] = PAPER_INTERVAL
    shift: float = DEFAULT_SHIFT
    t_eps: float = SAMPLE_T_EPS
    batch_size: int = 100

    def __post_init__(self) -> None:
        for name, values, known in (("methods", self.methods, METHODS),
                                    ("grids", self.grids, GRIDS)):  # fmt: skip
            if not values or any(v not in known for v in values):
                raise ValueError(f"{name} must be a non-empty subset of {known}, got {values}")
        if not self.budgets or any(not is_integer(b) or b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be NFE counts ≥ 1, got {self.budgets}")
        if not is_integer(self.num):
            raise ValueError(f"num must be a whole number of images, got {self.num!r}")
        object.__setattr__(self, "budgets", tuple(int(b) for b in self.budgets))  # NumPy's too
        object.__setattr__(self, "num", int(self.num))
        ScoreConfig().check_count(METRICS, self.num, "raise num to {least} or more")
        object.__setattr__(self, "interval", check_interval(self.interval))
        self.sampler("heun", "uniform", 1)  # cfg, shift, t_eps: SamplerConfig's own checks
        if not plan(self):
            raise ValueError(f"no row to run: Heun's fewest evaluations are {HEUN_FEWEST_NFE} "
                             f"(2 steps), over every budget of {self.budgets}: add a budget of "
                             f"{HEUN_FEWEST_NFE} or more, or another method")  # fmt: skip

    def skipped(self) -> list[int]:
        """The budgets below Heun's fewest evaluations, which get no Heun row."""
        if "heun" not in self.methods:
            return []
        return sorted(b for b in set(self.budgets) if b < HEUN_FEWEST_NFE)

    @classmethod
    def quick(cls, **overrides) -> NfeConfig:
        """CI-sized: two tiny budgets, a handful of images."""
        return cls(**({"budgets": QUICK_BUDGETS, "num": QUICK_NUM, "batch_size": QUICK_NUM}
                      | overrides))  # fmt: skip

    def sampler(self, method: str, grid: str, steps: int) -> SamplerConfig:
        return SamplerConfig(steps=steps, method=method, grid=grid, shift=self.shift,
                             cfg=self.cfg, interval=self.interval, t_eps=self.t_eps)  # fmt: skip

    def settings(self) -> dict:
        """What makes rows comparable (the sweep's extent and batch size are not part of it)."""
        keep = ("num", "seed", "cfg", "interval", "shift", "t_eps")
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items() if k in keep}  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One row of the study: a solver on a grid with a step count."""

    method: str
    grid: str
    steps: int

    @property
    def key(self) -> str:
        return f"{self.method}/{self.grid}/{self.steps}"


def plan(config: NfeConfig) -> list[Cell]:
    """Every (method, grid, steps) whose evaluations fit a budget, without repeats (Heun's 2n − 1
    evaluations map budgets 4 and 5 to the same 2 steps)."""
    cells: dict[str, Cell] = {}
    for method in config.methods:
        for grid in config.grids:
            for budget in sorted(config.budgets):
                steps = steps_for(method, budget)
                if method == "heun" and budget < HEUN_FEWEST_NFE:  # Heun-1 is Euler: not Heun
                    continue
                cell = Cell(method, grid, steps)
                cells.setdefault(cell.key, cell)
    return list(cells.values())


def rows_per_image(sampler: SamplerConfig) -> int:
    """Network rows per image: 2 for each evaluation inside the CFG interval (cfg ≠ 1), else 1."""
    rows = sampler.nfe()
    return rows if sampler.cfg == 1.0 else rows + sampler.guided_evaluations()


# ------------------------------------------------------------------------------- results


def _load_results(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable NFE study ({err}): pass --overwrite to "
                         "start a new one there, or choose another --out") from None  # fmt: skip
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} study: pass --overwrite to start a new one "
                         "there, or choose another --out")  # fmt: skip
    return data


def open_results(out: Path, header: dict, overwrite: bool) -> dict:
    """The study in `out` to continue (same header), or a new one. A study with another header
    is refused unless `overwrite`; so is a non-empty folder that holds no study."""
    path = out / RESULTS_NAME
    earlier = None if overwrite else _load_results(path)
    if earlier is not None:
        if _identity(earlier.get("header")) != _identity(header):
            differ = _differences(earlier.get("header"), header)
            raise ValueError(
                f"--out {out} holds an NFE study with other settings ({', '.join(differ)}): "
                "choose another --out, or pass --overwrite to replace its results"
            )
        return earlier
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty and holds no {RESULTS_NAME}: choose a new "
                         "or empty folder, or pass --overwrite")  # fmt: skip
    return {"format": FORMAT, "header": header, "rows": []}


def _identity(header) -> dict | None:
    """What a study is resumed under: its header less the checkpoint's spelling (`run`,
    `run/latest.pt`, an absolute path): the weights digest says which weights it scored."""
    if not isinstance(header, dict) or "weights_digest" not in header:
        return header
    return {k: v for k, v in header.items() if k != "checkpoint"}


def _differences(earlier, header: dict) -> list[str]:
    """What differs between two study headers, settings by name ('seed 1 → 3')."""
    earlier = earlier if isinstance(earlier, dict) else {}
    old, new = earlier.get("settings"), header["settings"]
    old = old if isinstance(old, dict) else {}
    differ = [f"{k} {old.get(k)!r} → {new[k]!r}" for k in new if old.get(k) != new[k]]
    for k in header:
        if k != "settings" and earlier.get(k) != header[k]:
            same_name = k == "weights_digest"  # other weights under the same name: no values
            differ.append(k if same_name else f"{k} {earlier.get(k)!r} → {header[k]!r}")
    return differ


def save_results(out: Path, results: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / RESULTS_NAME, json.dumps(results, indent=1))


# ---------------------------------------------------------------------------------- sweep


def study_header(config: NfeConfig, model, extractor, describe: dict) -> dict:
    """What identifies a study: its settings, the weights (digest), the extractor and
    `describe` (checkpoint, weights and reference names); rows are resumed only under it."""
    return {"settings": config.settings(), "weights_digest": weights_digest(model.net),
            "extractor": extractor.name, "fd_label": extractor.fd_label, **describe}  # fmt: skip


def run_nfe(
    config: NfeConfig,
    model,
    extractor,
    ref,
    out: str | Path,
    describe: dict,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run (or continue) the study of `model` (a TrainedModel) in `out`; returns the results.

    `ref` holds the data set's statistics under `extractor` (features kept for precision /
    recall); `describe` names the checkpoint, weights and reference in the header.
    """
    from pixeljit.evaluation import GenerationSpec, evaluate

    if config.cfg != 1.0 and model.net.config.num_classes == 0:
        raise ValueError("an unconditional model cannot be guided: use cfg = 1")
    out = Path(out)
    say = progress or (lambda line: None)
    results = open_results(out, study_header(config, model, extractor, describe), overwrite)
    done = {row["key"] for row in results["rows"]}
    cells = plan(config)
    todo = [c for c in cells if c.key not in done]
    say(f"{len(cells)} rows ({len(cells) - len(todo)} done earlier), {config.num} images each")
    for index, cell in enumerate(todo, 1):
        sampler = config.sampler(cell.method, cell.grid, cell.steps)
        spec = GenerationSpec(num=config.num, sampler=sampler, seed=config.seed,
                              batch_size=config.batch_size)  # fmt: skip
        start = time.perf_counter()
        scores = evaluate(model, spec, extractor, ref, METRICS)
        seconds = time.perf_counter() - start
        fd = scores[extractor.fd_label]
        if not math.isfinite(fd):
            raise ValueError(f"{cell.key}: the FD is not finite ({fd})")
        row = {"key": cell.key, "method": cell.method, "grid": cell.grid, "steps": cell.steps,
               "nfe": evaluations(cell.method, cell.steps), "rows_per_image":
               rows_per_image(sampler), "fd": fd, "precision": scores.get("precision"),
               "recall": scores.get("recall"), "class_accuracy": scores.get("class_accuracy"),
               "seconds": round(seconds, 2)}  # fmt: skip
        results["rows"].append(row)
        save_results(out, results)
        acc = row["class_accuracy"]
        say(f"[{index}/{len(todo)}] {cell.method:8s} {cell.grid:8s} NFE {row['nfe']:4d}: "
            f"{extractor.fd_label} {fd:.3f}" + (f", accuracy {acc:.3f}" if acc is not None
                                                 else "") + f" ({seconds:.0f} s)")  # fmt: skip
    save_results(out, results)  # a study with nothing left to run is still written
    return results


# ------------------------------------------------------------------------------- analysis


def sorted_rows(results: dict) -> list[dict]:
    """Every row of the study, by solver, grid and NFE: the rows of earlier runs in the same
    folder too (its header guarantees the same checkpoint, reference, seeds and guidance), so
    a study can be grown run by run (--methods / --grids / --budgets)."""
    return sorted(results["rows"], key=lambda r: (r["method"], r["grid"], r["nfe"]))


def no_verdict_reason(rows: list[dict]) -> str | None:
    """Why `few_step_verdict` cannot judge `rows` (None: it can), with the budgets to add."""
    few = [r for r in rows if r["nfe"] <= FEW_NFE]
    if not few:
        return (f"no row lies at ≤ {FEW_NFE} NFE (add budgets such as 10 {FEW_NFE} to solvers "
                "that take few steps)")  # fmt: skip
    if all(r["nfe"] <= FEW_NFE or r["nfe"] > MANY_NFE for r in rows):
        return (f"no row lies between {FEW_NFE} and {MANY_NFE} NFE to compare with (add budgets "
                f"such as 50 {MANY_NFE})")  # fmt: skip
    return None


def few_step_verdict(rows: list[dict]) -> dict:
    """The issue's goal: is some row at ≤ FEW_NFE within FD_TOLERANCE of the best FD at
    ≤ MANY_NFE? Returns the best rows of both ranges and the ratio of their FDs; {} when the
    rows cannot say: none at ≤ FEW_NFE, or none between FEW_NFE and MANY_NFE to compare with
    (the best of few-step rows alone is within any tolerance of itself)."""
    if no_verdict_reason(rows):
        return {}
    many = [r for r in rows if r["nfe"] <= MANY_NFE]
    few = [r for r in rows if r["nfe"] <= FEW_NFE]
    best = min(many, key=lambda r: r["fd"])
    best_few = min(few, key=lambda r: r["fd"])
    ratio = best_few["fd"] / best["fd"] if best["fd"] > 0 else math.inf
    return {"best": best["key"], "best_fd": best["fd"], "best_few": best_few["key"],
            "best_few_fd": best_few["fd"], "ratio": ratio,
            "met": bool(ratio <= 1 + FD_TOLERANCE)}  # fmt: skip
