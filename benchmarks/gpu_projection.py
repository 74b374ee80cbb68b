"""Projected wall times of whole studies on one GPU, from per-step rates (measured by
benchmarks/gpu_bench.py, or assumed, as in params/presets/mnist_gpu.yaml's comments).

The jobs are the workflow's (one teacher, classifier and couplings per dataset and seed, one
reflow and one evaluate per grid point, one report), each with the configuration the workflow
resolves for it (``infra.grid.stage_configs``, the Snakefile's own call). A job's work:

* teacher: ``steps * teacher_step_s`` plus its evaluation, ``eval.n_samples`` forwards;
* classifier: ``steps * classifier_step_s``;
* couplings: ``(n_train + n_test) * stages * sum(step_counts(times, steps))`` network
  evaluations (an RK4 step of one image is 4, ``STAGES``) at ``nfe_per_s``;
* reflow: ``steps * control_step_s`` for lambda = 0; with the regularizer the control's cost
  for the ``warm_start`` fraction of the steps, ``hutchinson_step_s`` after it;
* evaluate: per NFE n of the sweep the student's and the teacher's n-step Euler samples of
  ``n_samples`` images (2 n evaluations each), the teacher's ceiling solve (``stages *
  teacher_steps``), the held-out TM loss (``heldout_times`` forwards per test coupling), all
  at ``nfe_per_s``, plus ``eval_cpu_s`` of metrics on the CPU;
* report: ``report_s`` on the CPU.

``cifar_hours`` adds the GPU work of one seed's jobs (a sequential run on one GPU; start-up and
CPU metrics left out). ``makespan`` runs the DAG as ``snakemake --cores N`` does: a job starts
when its inputs exist and its ``threads`` fit in the free cores; each job first spends
``startup_s`` (+ its CPU work) on its own cores, then its GPU work, which it shares with the
other jobs in their GPU phase: with n of them each runs at ``min(1, saturation / n)`` of its
speed alone (``saturation``: how many jobs the GPU serves at full speed each, measured by
running several at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = {"euler": 1, "heun": 2, "rk4": 4, "rk38": 4, "dopri5": 6}


@dataclass
class Rates:
    teacher_step_s: float
    control_step_s: float
    hutchinson_step_s: float
    classifier_step_s: float
    nfe_per_s: float  # image-evaluations (network forwards of one image) per second
    startup_s: float = 0.0  # per job process: interpreter, imports, CUDA context, data
    eval_cpu_s: float = 0.0  # an evaluate job's metrics on the CPU
    report_s: float = 0.0
    saturation: float = 1.0


@dataclass
class Job:
    name: str
    rule: str
    gpu_s: float
    cpu_s: float = 0.0
    deps: list = field(default_factory=list)
    threads: int = 1
    seed: int | None = None


def step_counts(times, steps: int) -> list[int]:
    """The steps per segment of ``core.time_grids.uniform`` (repeated here: this module imports
    no torch; the power and fitted grids place about as many in all, the fitted grid's pilot
    aside)."""
    return [max(1, round(steps * (b - a))) for a, b in zip(times[:-1], times[1:], strict=True)]


def union_grid(Ks) -> list[float]:
    """``core.interpolant.union_grid``."""
    return sorted({round(k / K, 12) for K in Ks for k in range(K + 1)})


def couplings_nfe(cp: dict) -> float:
    """Network evaluations of one image's couplings solve."""
    return STAGES[cp["solver"]] * sum(step_counts(union_grid(cp["windows"]), cp["steps"]))


def evaluate_nfe(ev: dict, n_test: int) -> float:
    """Image-evaluations of an evaluate job (see the module docstring)."""
    sweep = ev["n_samples"] * 2 * sum(ev["nfe"])
    ceiling = ev["n_samples"] * STAGES[ev["teacher_solver"]] * ev["teacher_steps"]
    heldout = n_test * ev.get("heldout_times", 8)
    return sweep + ceiling + heldout


def reflow_step_s(cfg: dict, r: Rates) -> float:
    """Mean seconds per step of a student (the regularizer on after its warm start)."""
    reg = cfg["regularizer"]
    if reg["weight"] <= 0:
        return r.control_step_s
    w = reg["warm_start"]
    return w * r.control_step_s + (1 - w) * r.hutchinson_step_s


def jobs(configs: dict, resources, r: Rates) -> list[Job]:
    """The workflow's jobs with their work: ``configs`` = ``infra.grid.stage_configs(...)``,
    ``resources(rule) -> dict`` (threads)."""
    def th(rule):
        return int(resources(rule).get("threads", 1))

    out, evals = [], []
    cps = {key: cfg for (stage, key), cfg in configs.items() if stage == "couplings"}
    for (stage, key), cfg in sorted(configs.items(), key=lambda kv: (
            ["teacher", "classifier", "couplings", "reflow", "evaluate"].index(kv[0][0]),
            kv[0][1])):
        ds, seed = key[0], key[1]
        tag = "/".join(str(k) for k in key)
        if stage == "teacher":
            ev = cfg.get("eval", {}).get("n_samples", 0)
            gpu = cfg["train"]["steps"] * r.teacher_step_s + ev / r.nfe_per_s
            out.append(Job(f"teacher/{tag}", stage, gpu, r.startup_s, [], th(stage), seed))
        elif stage == "classifier":
            out.append(Job(f"classifier/{tag}", stage,
                           cfg["train"]["steps"] * r.classifier_step_s, r.startup_s, [],
                           th(stage), seed))
        elif stage == "couplings":
            gpu = (cfg["n_train"] + cfg["n_test"]) * couplings_nfe(cfg) / r.nfe_per_s
            out.append(Job(f"couplings/{tag}", stage, gpu, r.startup_s,
                           [f"teacher/{ds}/{seed}"], th(stage), seed))
        elif stage == "reflow":
            gpu = cfg["train"]["steps"] * reflow_step_s(cfg, r)
            out.append(Job(f"reflow/{tag}", stage, gpu, r.startup_s,
                           [f"couplings/{ds}/{seed}"], th(stage), seed))
        elif stage == "evaluate":
            ev_cfg = cfg
            n_test = cps[(ds, seed)]["n_test"]
            deps = [f"teacher/{ds}/{seed}"]
            if ("classifier", (ds, seed)) in configs:
                deps.append(f"classifier/{ds}/{seed}")
            for st, k in configs:
                if st == "reflow" and k[:2] == (ds, seed):
                    gpu = evaluate_nfe(ev_cfg, n_test) / r.nfe_per_s
                    name = f"evaluate/{ds}/{seed}/{k[2]}"
                    out.append(Job(name, stage, gpu, r.startup_s + r.eval_cpu_s,
                                   [*deps, f"reflow/{ds}/{seed}/{k[2]}"], th(stage), seed))
                    evals.append(name)
    out.append(Job("report", "report", 0.0, r.report_s, evals, th("report")))
    return out


def cifar_hours(job_list: list[Job], seed: int = 0) -> float:
    """GPU hours of one seed's jobs run one after another on one GPU."""
    return sum(j.gpu_s for j in job_list if j.seed == seed) / 3600


def makespan(job_list: list[Job], cores: int, saturation: float) -> float:
    """Seconds from start to the last job's end (see the module docstring): an event
    simulation, exact for this model (rates are constant between events)."""
    by_name = {j.name: j for j in job_list}
    for j in job_list:
        if j.threads > cores:
            raise ValueError(f"job {j.name} needs {j.threads} cores, only {cores}")
        for d in j.deps:
            if d not in by_name:
                raise ValueError(f"job {j.name} depends on unknown {d}")
    done, running, t, free = set(), {}, 0.0, cores
    pending = list(job_list)  # start order: the list's (dependencies first, as Snakemake)
    while pending or running:
        for j in list(pending):
            if j.threads <= free and all(d in done for d in j.deps):
                running[j.name] = [j.cpu_s, j.gpu_s]
                free -= j.threads
                pending.remove(j)
        if not running:
            raise ValueError("jobs whose dependencies never finish: "
                             + ", ".join(j.name for j in pending))
        n_gpu = sum(1 for c, g in running.values() if c <= 0 and g > 0)
        speed = min(1.0, saturation / n_gpu) if n_gpu else 1.0
        # time to the next phase end: a CPU phase at speed 1, a GPU phase at `speed`
        dt = max(0.0, min(c if c > 0 else g / speed for c, g in running.values()))
        t += dt
        for name, cg in list(running.items()):
            if cg[0] > 0:
                cg[0] -= dt
            else:
                cg[1] -= dt * speed
            if cg[0] <= 1e-9 and cg[1] <= 1e-9 * max(1.0, by_name[name].gpu_s):
                del running[name]
                done.add(name)
                free += by_name[name].threads
            elif cg[0] <= 1e-9:
                cg[0] = 0.0
    return t


def critical_path(job_list: list[Job]) -> float:
    """The longest chain of ``cpu_s + gpu_s`` (the makespan with unlimited cores and GPU)."""
    by_name = {j.name: j for j in job_list}
    memo: dict = {}

    def end(name):
        if name not in memo:
            j = by_name[name]
            memo[name] = max((end(d) for d in j.deps), default=0.0) + j.cpu_s + j.gpu_s
        return memo[name]

    return max(end(j.name) for j in job_list)



# An earlier check of the mnist preset's 280,177-parameter UNet on one H200 (torch 2.11, fp32,
# eager, batch 128, data on the GPU): the rates params/presets/mnist_gpu.yaml was sized from,
# scaled to its net by the FLOPs ratio (``scaled_rates``), with the assumptions of ASSUMED.
MNIST_280K_H200 = {"teacher_step_s": 1 / 34.6, "control_step_s": 0.069,
                   "hutchinson_step_s": 0.189, "nfe_per_s": 70.6e3}
# Not measured on a GPU: a classifier step; a job's start-up (interpreter, imports, CUDA
# context); an evaluation's CPU metrics at n_samples = 1000 (the whole evaluate command took 57 s
# of CPU time on a 2-core CPU machine with a 17k-parameter net); the report. saturation: the
# 280k teacher step above does 128 x 0.287 GFLOP in 29 ms, 1.3 TFLOP/s, a fraction of a
# percent of the GPU: the step is bound by the host, so 8 such jobs (16 cores, 2 per job) are
# taken to share the GPU without slowing each other.
ASSUMED = {"classifier_step_s": 0.005, "startup_s": 10.0, "eval_cpu_s": 50.0, "report_s": 30.0,
           "saturation": 8.0}


def scaled_rates(flops_ratio: float, **over) -> Rates:
    """MNIST_280K_H200 for a net with ``flops_ratio`` times the FLOPs per image (times
    slower; ``nfe_per_s`` divided), plus ASSUMED, plus ``over``."""
    r = {k: v * flops_ratio for k, v in MNIST_280K_H200.items() if k.endswith("_s")}
    r["nfe_per_s"] = MNIST_280K_H200["nfe_per_s"] / flops_ratio
    return Rates(**{**ASSUMED, **r, **over})
