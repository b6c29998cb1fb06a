"""Command line: ``sr2lora run | presets | demo | ...`` — parse, call, print; the work is elsewhere."""

from __future__ import annotations

import os

# The command line, not the library, sets the process environment: without a passive OpenMP wait policy 2 threads
# ran 2-6x slower than 1 on small CPU machines. It takes effect only before torch is imported, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import codecs  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from .config import (  # noqa: E402
    ConfigError,
    load_config,
    load_preset_dict,
    parse_overrides,
    preset_names,
)
from .core.errors import Sr2loraError  # noqa: E402
from .core.signals import Interrupted  # noqa: E402
from .runs.folder import RunFolder  # noqa: E402


class UserError(Sr2loraError):
    """An error whose message is the whole story: printed without a traceback, exit status 2."""


def _default_out(cfg) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.preset or 'custom'}-{cfg.method.name}-seed{cfg.seed}-{stamp}"


def cmd_run(args: argparse.Namespace) -> int:
    from .launch import check_new_run, continue_state, launch, resume_config, running_elsewhere
    from .runs.lock import FolderInUse

    if args.resume:
        run_dir = Path(args.resume)
        for flag, value in (("--preset", args.preset), ("--out", args.out)):
            if value and not (flag == "--out" and Path(value).resolve() == run_dir.resolve()):
                raise UserError(
                    f"run: {flag} {value} with --resume {run_dir}: a resumed run continues with the {RunFolder.CONFIG} and "
                    f"folder it was started with; drop {flag} (or start a new run without --resume)"
                )
        planned = resume_config(run_dir, args.overrides)  # checked before any work
        if planned is None:
            print(f"{run_dir}: the run is finished ({RunFolder.RESULTS} exists); nothing to resume")
            return 0
        results = launch(planned, run_dir, resume=True, progress=not args.quiet,
                         allow_other_compute=args.allow_other_compute)
    else:
        if not args.preset:
            raise UserError("run: give --preset NAME (see `sr2lora presets`) or --resume RUN_DIR")
        cfg = load_config(args.preset, args.overrides)
        from .core.distributed import env_world_size

        if not args.out and (env_world_size() > 1 or args.continue_):  # the folder must be known in advance
            what = "run --continue" if args.continue_ else "a torchrun run"
            raise UserError(f"run: {what} needs --out RUN_DIR (the same folder every time it is given)")
        run_dir = Path(args.out) if args.out else _default_out(cfg)
        if args.continue_:
            resume = continue_state(cfg, run_dir)  # the sweeps' idempotent cell
            if resume is None:
                print(f"{run_dir}: the run is finished ({RunFolder.RESULTS} exists); nothing to do")
                return 0
        else:
            check_new_run(cfg, run_dir)
            resume = False
        try:
            results = launch(cfg, run_dir, resume=resume, progress=not args.quiet,
                             allow_other_compute=args.allow_other_compute)
        except FolderInUse as exc:  # taken between the check and the lock
            if not args.continue_:
                raise
            raise running_elsewhere(run_dir, exc) from exc
    from .core.distributed import current

    if current().is_main:  # torchrun: one summary, from rank 0
        print(
            f"{results['method']}: final accuracy {_num(results['final_acc'])}%, average "
            f"{_num(results['avg_acc'])}%, forgetting {_num(results['forgetting'])}, plasticity "
            f"{_num(results['plasticity'])} ({results['num_tasks']} tasks, {results['seconds']:.0f}s) -> "
            f"{RunFolder(run_dir).results_file}"
        )
        empty = results.get("empty_eval_tasks") or []
        if empty:
            print(f"note: task(s) {', '.join(str(j + 1) for j in empty)} have no evaluation image; their accuracies "
                  f"are undefined (null in {RunFolder.RESULTS})", file=sys.stderr)
    return 0


def _num(value: float | None) -> str:
    """A metric for the summary line: two decimals, or 'n/a' when undefined (NaN or null)."""
    return "n/a" if value is None or value != value else f"{value:.2f}"


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import build_config

    for name in preset_names():
        data = load_preset_dict(name)
        cfg = build_config(data)
        desc = cfg.description or ""
        print(f"{name:24s} {cfg.data.dataset:12s} {cfg.model.backbone:36s} {desc}")
    return 0


def cmd_show_config(args: argparse.Namespace) -> int:
    import yaml

    from .config import method_defaults_used

    cfg = load_config(args.preset, args.overrides)
    used = method_defaults_used(args.preset, args.overrides)
    if used:  # where a value comes from when neither the preset nor the command line set it
        print(f"# method {cfg.method.name}'s training defaults: "
              + ", ".join(f"{k}={v}" for k, v in used.items()))
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    from .assets import prepare_assets

    for preset in args.preset:
        print(f"{preset}:")
        prepare_assets(load_config(preset, args.overrides), say=lambda line: print(f"  {line}"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .core.signals import stop_on_signals
    from .demo import DEMO_METHODS, default_jobs, run_demo
    from .runs.lock import run_folder_lock

    methods = tuple(args.methods.split(",")) if args.methods else DEMO_METHODS
    jobs = default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        raise UserError(f"--jobs: expected a positive number of parallel runs, got {jobs}")
    try:
        with stop_on_signals(), run_folder_lock(args.out):  # two demos into one folder would delete each other's runs
            run_demo(args.preset, args.out, methods, args.overrides, fresh=args.fresh, progress=not args.quiet,
                     jobs=jobs)
    except Interrupted as exc:
        print(f"interrupted; run the same `sr2lora demo` again to continue (finished runs in {args.out} are reused, "
              f"interrupted ones resumed)", file=sys.stderr)
        return exc.exit_code
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .inference.predict import format_prediction, predict

    entries = predict(args.run, args.inputs, top_k=args.top_k, task=args.task, batch_size=args.batch_size,
                      device=args.device, progress=not args.quiet)
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for e in entries:
            print(format_prediction(e))
    bad = sum("error" in e for e in entries)
    if bad == len(entries):  # nothing classified: a failure, not a result
        print(f"error: none of the {bad} file(s) could be read as an image (see the lines above)", file=sys.stderr)
        return 2
    if bad:
        print(f"{bad} of {len(entries)} files could not be read as images", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .inference.export import export_run

    out = export_run(args.run, args.out, task=args.task, force=args.force)
    print(f"wrote {out} and {out.with_suffix('.json')} (timm model, class names, transform)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    out = Path(args.out) if args.out else (Path(args.runs[0]) / "report" if len(args.runs) == 1 else Path("report"))
    try:
        doc = build_report(args.runs, out)
    except (FileNotFoundError, ValueError) as exc:  # no runs; unreadable results.json; mixed task counts
        raise UserError(str(exc)) from exc
    except OSError as exc:  # a full disk, no rights: the previous report (if any) is as it was
        from .core.atomic import WRITE_ERRNOS

        if exc.errno not in WRITE_ERRNOS:
            raise
        raise UserError(f"report: cannot write into {out}: {exc.strerror}; a report there before is unchanged. "
                        f"Free space or choose another --out") from exc
    for g in doc["groups"]:
        m = g["metrics"]
        gain = g["gain_over_frozen"]
        extra = f", vs frozen {'+' if (gain['final_acc'] or 0) >= 0 else ''}{_num(gain['final_acc'])}" if gain else ""
        print(f"{g['preset']}/{g['name']}: n={g['n']}, A_T {_num(m['final_acc']['mean'])} ± "
              f"{_num(m['final_acc']['std'])}, Ā {_num(m['avg_acc']['mean'])} ± {_num(m['avg_acc']['std'])}{extra}")
    print(f"{doc['num_runs']} runs -> {out}/report.md, report.html, report.json, {len(doc['figures'])} figures")
    return 0


def _csv_numbers(text: str | None, kind: type, option: str) -> list | None:
    if text is None:
        return None
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"{option}: expected comma-separated numbers, got {text!r}") from exc


def cmd_robustness(args: argparse.Namespace) -> int:
    from .analysis.drift import find_run_dirs
    from .analysis.robustness import DEFAULT_EPS, RobustnessOptions, robustness_run
    from .core.atomic import atomic_write_json
    from .report.figures import plot_robustness
    from .report.tables import robustness_table

    eps = _csv_numbers(args.eps, float, "--eps")
    opts = RobustnessOptions(task=args.task, batch_size=args.batch_size, draws=args.draws,
                             grad_draws=args.grad_draws, eps=eps if eps is not None else DEFAULT_EPS,
                             batch_sizes=_csv_numbers(args.batch_sizes, int, "--batch-sizes"),
                             seed=args.seed if args.seed is not None else 0, relation_norm=args.relation_norm)
    try:
        runs = find_run_dirs(args.runs)
        for run in runs:
            start = time.time()
            doc = robustness_run(run, opts, args.device)
            atomic_write_json(RunFolder(run).robustness_file, doc)
            out = Path(args.out) if args.out else run
            out.mkdir(parents=True, exist_ok=True)
            # in the run folder: robustness.png; in an --out folder that may collect several runs: by run name
            fig = plot_robustness(doc, out / (f"robustness_{run.name}.png" if args.out else "robustness.png"))
            head, rows = robustness_table(doc)
            print(f"{RunFolder(run).robustness_file} ({time.time() - start:.0f}s), figure {fig}")
            for row in rows:
                print("  " + "; ".join(f"{h} {c}" for h, c in zip(head, row)))
            print(doc["reading"])
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.drift import analyze_or_reuse, find_run_dirs
    from .analysis.drift_margin import drift_margin_summary
    from .core.atomic import atomic_write_json
    from .report.figures import plot_drift, plot_drift_margin, run_label

    if args.robustness:
        return cmd_robustness(args)
    if args.samples is not None and args.samples < 1:
        raise UserError(f"--samples {args.samples}: expected at least 1 held-out item per task")
    if args.device is not None:
        from .core.hardware import check_device

        check_device(args.device, "--device")
    docs = []
    try:
        runs = find_run_dirs(args.runs)
        for run in runs:
            doc, reused = analyze_or_reuse(run, args.samples, args.seed, args.device, recompute=args.recompute)
            docs.append((run_label(doc, run if len(runs) > 1 else None), doc))
            print(f"{RunFolder(run).drift_file} ({'reused' if reused else doc['source']}; {doc['samples_per_task']} samples "
                  f"per task, seed {doc['sample_seed']})")
            for row in doc["summary"][1:]:
                print(f"  after task {row['t'] + 1}: relation drift {row['relation_drift']:.4g}, spectral "
                      f"{row['spectrum_drift']:.4g}, prototype shift {row['prototype_shift']:.4g}, margin of old "
                      f"samples {row['margin']:.3f}")
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    out = Path(args.out) if args.out else (runs[0] if len(runs) == 1 else Path("analysis"))
    paths = plot_drift(docs, out)
    dm = drift_margin_summary([{**doc, "run": str(run)} for run, (_, doc) in zip(runs, docs)])
    atomic_write_json(out / "drift_margin.json", dm)
    paths.append(plot_drift_margin(dm, out / "drift_margin.png"))
    print(f"plots: {', '.join(str(p) for p in paths)}; correlations: {out / 'drift_margin.json'}")
    print(dm["reading"])
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .core.signals import check_interrupt, stop_on_signals
    from .sweep import format_status, sweep_status

    if args.status:  # where every cell stands; non-zero while a cell failed
        rows = sweep_status(args.status)
        if not rows:
            raise UserError(f"--status {args.status}: no sweep recorded there (no sweep.json); give the sweep's --out")
        print(format_status(rows))
        return 1 if any(r.state == "failed" for r in rows) else 0
    cells, out = _plan_cells(args)
    launcher = _launcher(args)
    from .sweep import run_sweep

    try:
        with stop_on_signals():  # SIGINT/SIGTERM: the cells in progress stop cleanly, resumable
            summary = run_sweep(cells, out, launcher, dry_run=args.dry_run, report=not args.no_report,
                                argv=sys.argv[1:] if sys.argv[1:2] == ["sweep"] else None)
            check_interrupt()  # a stop asked for while the report was written is not swallowed
    except Interrupted as exc:
        print(f"interrupted; run the same `sr2lora sweep` again to continue (finished cells in {out} are skipped, "
              f"interrupted ones resumed)", file=sys.stderr)
        return exc.exit_code
    return 1 if summary["failed"] else 0


def _plan_cells(args: argparse.Namespace):
    """(cells, sweep folder) of ``sr2lora sweep``: a grid over --preset, or a named grid (--grid paper)."""
    from .sweep import parse_list, parse_seeds, plan_paper_grid, plan_sweep

    if args.grid == "paper":
        if args.preset:
            raise UserError("sweep: give --grid paper or --preset, not both")
        out = Path(args.out) if args.out else Path("runs") / "paper-grid"
        axes = [i for i in args.items if "," in i.split("=", 1)[-1] or ";" in i]
        if axes:
            raise UserError(f"sweep --grid paper: items are fixed overrides of every cell, not grid axes: {axes}")
        cells = plan_paper_grid(out, datasets=parse_list(args.datasets, str, "-d"), tasks=parse_list(args.tasks, int,
                                "-t"), seeds=parse_list(args.seeds, int, "-s"),
                                methods=parse_list(args.methods, str, "-m"), overrides=args.items)
        return cells, out
    if not args.preset:
        raise UserError("sweep: give --preset NAME (a grid over it) or --grid paper (see `sr2lora sweep -h`)")
    if args.datasets or args.tasks or args.methods:
        raise UserError("sweep: -d/-t/-m select cells of --grid paper; with --preset, give axes as key=v1,v2")
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{Path(args.preset).stem}"
    return plan_sweep(args.preset, args.items, out, parse_seeds(args.seeds)), out


def _launcher(args: argparse.Namespace):
    """The launcher named by --launcher, with its options."""
    from .sweep import Local, Serial, Slurm, SlurmOptions, parse_sbatch

    other = args.allow_other_compute
    if args.launcher == "serial":
        return Serial(progress=not args.quiet, allow_other_compute=other)
    if args.launcher == "local":
        devices = [d for d in (args.devices or "").split(",") if d.strip()] or None
        jobs = args.jobs if args.jobs is not None else (len(devices) if devices else None)
        if jobs is None:
            from .sweep.launchers import visible_gpus

            jobs = len(visible_gpus()) or 2
        return Local(jobs=jobs, devices=devices, allow_other_compute=other)
    return Slurm(SlurmOptions(partition=args.partition, account=args.account, qos=args.qos, time=args.time,
                              gpus_per_cell=args.gpus_per_cell, cpus_per_cell=args.cpus_per_cell,
                              mem_gb=args.mem_per_cell, array_parallelism=args.array_parallelism,
                              sbatch=parse_sbatch(args.sbatch), setup=list(args.setup)),
                 wait=not args.no_wait, allow_other_compute=other)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sr2lora", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and evaluate a class-incremental run")
    r.add_argument("--preset", help="preset name (see `sr2lora presets`) or a YAML file")
    r.add_argument("--out", help="run folder (default runs/<preset>-<method>-seed<seed>-<time>)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last complete task")
    r.add_argument("--continue", dest="continue_", action="store_true",
                   help="with --preset and --out: start the run, resume it if --out holds it unfinished, or do "
                        "nothing if it finished (what a sweep's cell runs; a folder in use exits with 75)")
    r.add_argument("--allow-other-compute", action="store_true",
                   help="with --resume or --continue: continue although this machine or train.threads / "
                        "train.eval_batch_size / train.device would compute otherwise than the checkpoint's tasks did "
                        f"(the numbers then differ from an uninterrupted run; {RunFolder.RESULTS} records task_compute)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=5 method.name=seqlora")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="SR²-LoRA vs seqlora vs frozen on the offline clip-art benchmark")
    d.add_argument("--preset", default="clipart-10t")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--methods", help="comma-separated (default sr2lora,seqlora,frozen)")
    d.add_argument("--fresh", action="store_true", help="rerun even if finished runs exist")
    d.add_argument("--jobs", type=int, default=None,
                   help="runs at once, one thread each (default: one per core, at most 2; 1 = one after another)")
    d.add_argument("--quiet", action="store_true")
    d.add_argument("overrides", nargs="*", help="dotted key=value overrides applied to every method")
    d.set_defaults(func=cmd_demo)

    a = sub.add_parser("assets", help="build the cached weights and datasets a preset reads (once; offline)")
    a.add_argument("--preset", action="append", required=True, help="preset name or YAML file (repeatable)")
    a.add_argument("overrides", nargs="*", help="dotted key=value overrides (e.g. data.render_size=128)")
    a.set_defaults(func=cmd_assets)

    ps = sub.add_parser("presets", help="list the shipped presets")
    ps.set_defaults(func=cmd_presets)

    c = sub.add_parser("config", help="print the resolved config of a preset with overrides")
    c.add_argument("--preset", required=True)
    c.add_argument("overrides", nargs="*")
    c.set_defaults(func=cmd_show_config)

    pr = sub.add_parser("predict", help="classify images with a finished run (top-k class names)")
    pr.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished run folder")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders (recursive)")
    pr.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    pr.add_argument("--json", action="store_true", help="print a JSON list instead of one line per file")
    pr.add_argument("--task", type=int, help="use the model as after task T (0-based; default: the last)")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="write a finished run as one plain timm model (+ JSON sidecar)")
    ex.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished run folder")
    ex.add_argument("--out", required=True, metavar="FILE.safetensors", help="weights file; sidecar FILE.json")
    ex.add_argument("--task", type=int, help="export the model as after task T (0-based; default: the last)")
    ex.add_argument("--force", action="store_true", help="replace existing output files")
    ex.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="tables and figures across runs (seeds aggregated, gain over frozen)")
    rp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders searched for runs")
    rp.add_argument("--out", help="report folder (default RUN_DIR/report for one path, else ./report)")
    rp.set_defaults(func=cmd_report)

    an = sub.add_parser("analyze", help="drift of old tasks (relation, spectrum, prototypes, margins) per task")
    an.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished (or checkpointed) run folders")
    an.add_argument("--samples", type=int, help="held-out items per task (default analysis.samples_per_task)")
    an.add_argument("--seed", type=int, help="seed of the held-out sample (default analysis.seed)")
    an.add_argument("--out", help="folder for the plots (default the run folder; ./analysis for several runs)")
    an.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the run's train.device)")
    an.add_argument("--recompute", action="store_true",
                    help=f"recompute even if RUN_DIR/{RunFolder.DRIFT} has the same sample")
    rb = an.add_argument_group("robustness", "--robustness: instead of the drift, how much the spectral, "
                               "batch-spectral and entry-wise losses and their gradients move under re-drawn "
                               f"estimates, and Weyl's bound (RUN_DIR/{RunFolder.ROBUSTNESS}; --seed seeds the re-draws)")
    rb.add_argument("--robustness", action="store_true", help="measure robustness instead of drift")
    rb.add_argument("--task", type=int, help="current task t (0-based, >= 1; default the last); previous = t-1")
    rb.add_argument("--batch-size", type=int, help="reference batch size (default train.batch_size)")
    rb.add_argument("--draws", type=int, default=24, help="re-draws per perturbation setting (default 24)")
    rb.add_argument("--grad-draws", type=int, default=6, help="of which with a gradient (default 6)")
    rb.add_argument("--eps", help="relative feature-noise sizes, comma-separated (default 0.001,0.003,0.01,0.03,0.1)")
    rb.add_argument("--batch-sizes", help="smaller batch sizes, comma-separated (default b/2,b/4,b/8)")
    rb.add_argument("--relation-norm", help="none | l2 | trace (default the run's method.relation_norm)")
    an.set_defaults(func=cmd_analyze)

    sw = sub.add_parser(
        "sweep", help="run a grid of cells (settings x seeds, or the paper's grid) on a launcher, then report",
        description="Items key=v1,v2 are grid axes (';' separates values when they contain commas, e.g. "
                    "method.layers='[0,1];[2,3]'); items with one value are fixed overrides of every cell. Each "
                    "cell is an idempotent `sr2lora run --continue`: the same command again skips finished cells and "
                    "resumes interrupted ones.")
    sw.add_argument("--preset", help="the preset the grid varies (a grid of key=v1,v2 axes x --seeds)")
    sw.add_argument("--grid", choices=["paper"], help="a named grid: the paper's datasets x tasks x methods x seeds")
    sw.add_argument("-d", "--datasets", help="--grid paper: datasets (default cifar100,imagenet-r,imagenet-a,cub200)")
    sw.add_argument("-t", "--tasks", help="--grid paper: task counts (default 5,10,20,50)")
    sw.add_argument("-m", "--methods", help="--grid paper: methods (default the paper's variants and baselines)")
    sw.add_argument("-s", "--seeds", help="comma-separated seeds (default: the preset's seed; paper: 0,1993,1996)")
    sw.add_argument("--out", help="sweep folder (default runs/sweep-<preset> or runs/paper-grid)")
    sw.add_argument("--launcher", choices=["serial", "local", "slurm"], default="serial",
                    help="serial: one cell after another here (default); local: --jobs cells at once here; "
                         "slurm: one SLURM job per cell (a job array, through submitit)")
    sw.add_argument("--status", metavar="OUT", help="print where every cell of the sweep in OUT stands and exit "
                                                     "(non-zero while a cell failed)")
    sw.add_argument("--dry-run", action="store_true", help="print the cells (and the sbatch script) only")
    sw.add_argument("--no-report", action="store_true", help="do not write OUT/report at the end")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.add_argument("--allow-other-compute", action="store_true",
                    help="resume cells that started with other threads, device or machine (their numbers then "
                         "differ from an uninterrupted run's; each run's results record it per task)")
    lo = sw.add_argument_group("local launcher")
    lo.add_argument("--jobs", type=int, help="cells at once (default: one per visible GPU, else 2 single-thread)")
    lo.add_argument("--devices", help="CUDA devices to use, e.g. 0,1,2,3 (default: every visible one)")
    sl = sw.add_argument_group("slurm launcher")
    sl.add_argument("--partition", help="sbatch --partition")
    sl.add_argument("--account", help="sbatch --account")
    sl.add_argument("--qos", help="sbatch --qos")
    sl.add_argument("--time", type=int, default=60, help="time limit per cell, minutes (default 60)")
    sl.add_argument("--gpus-per-cell", type=int, default=0, help="GPUs per cell; more than 1 runs torchrun in the job")
    sl.add_argument("--cpus-per-cell", type=int, help="CPUs per cell (sbatch --cpus-per-task)")
    sl.add_argument("--mem-per-cell", type=float, help="memory per cell, GB")
    sl.add_argument("--array-parallelism", type=int, default=256, help="cells running at once (default 256)")
    sl.add_argument("--sbatch", action="append", default=[], metavar="FLAG=VALUE",
                    help="any other sbatch option, without its --, e.g. --sbatch constraint=a100 (repeatable)")
    sl.add_argument("--setup", action="append", default=[], metavar="LINE",
                    help="a shell line run in each job before its cell, e.g. --setup 'module load cuda' (repeatable)")
    sl.add_argument("--no-wait", action="store_true", help="return once submitted (default: wait for the jobs)")
    sw.add_argument("items", nargs="*", metavar="KEY=VALUES", help="grid axes and fixed overrides")
    sw.set_defaults(func=cmd_sweep)
    return p


def _escape_unprintable(exc: UnicodeError) -> tuple[str | bytes, int]:
    """Encoding error handler of the CLI's output: a file name's undecodable bytes (surrogate escapes) go out as
    the bytes they were, any other character the terminal's encoding lacks as an escape (``\\xe9``)."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    chunk = exc.object[exc.start:exc.end]
    if all(0xDC80 <= ord(c) <= 0xDCFF for c in chunk):
        return bytes(ord(c) - 0xDC00 for c in chunk), exc.end
    return codecs.backslashreplace_errors(exc)


def _tolerant_streams() -> None:
    """Print what the terminal's encoding cannot show instead of failing (:func:`_escape_unprintable`): under an
    ASCII locale a class name with an accent used to end ``predict`` with a UnicodeEncodeError."""
    codecs.register_error("sr2lora-escape", _escape_unprintable)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "encoding", "utf-8").lower().replace("-", "") != "utf8":
            try:
                reconfigure(errors="sr2lora-escape")
            except (ValueError, OSError):  # a stream that cannot change (closed, or a test's capture)
                pass


def main(argv: list[str] | None = None) -> int:
    _tolerant_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "overrides"):
        try:
            parse_overrides(args.overrides)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        return int(args.func(args) or 0)
    except Sr2loraError as exc:  # a problem the user can fix: its message is the whole story
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except BrokenPipeError:  # e.g. `sr2lora presets | head`
        return 0
    except OSError as exc:  # disk full, no permission, read-only: a message, not a traceback
        from .core.atomic import WRITE_ERRNOS

        if exc.errno not in WRITE_ERRNOS:
            raise
        print(f"error: cannot write {exc.filename or 'a file'}: {exc.strerror}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        where = getattr(exc, "run_dir", None)
        if where is not None and not RunFolder(where).is_run():  # stopped before the run began
            print(f"interrupted before anything was written to {where}; nothing to resume, start the run again",
                  file=sys.stderr)
        else:
            print(f"interrupted; resume with sr2lora run --resume {where or 'RUN_DIR'}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

