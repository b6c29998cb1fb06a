"""Command line: ``sr2lora run | presets | demo | ...`` — parse, call, print; the work is elsewhere."""

from __future__ import annotations

import os

# The command line, not the library, sets the process environment: without a passive OpenMP wait policy 2 threads
# ran 2-6x slower than 1 on small CPU machines. It takes effect only before torch is imported, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from .config import (  # noqa: E402
    RUNTIME_KEYS,
    ConfigError,
    load_config,
    load_preset_dict,
    parse_overrides,
    preset_names,
)
from .errors import Sr2loraError  # noqa: E402
from .signals import Interrupted  # noqa: E402


class UserError(Sr2loraError):
    """An error whose message is the whole story: printed without a traceback, exit status 2."""


def _train(cfg, run_dir: Path, quiet: bool, resume: bool) -> dict:
    """Trainer(cfg, run_dir).run() with SIGINT/SIGTERM turned into a clean stop (see sr2lora.signals)."""
    from .engine import Trainer
    from .preflight import check_out_outside_data
    from .run_lock import run_folder_lock
    from .signals import Interrupted, stop_on_signals

    check_out_outside_data(cfg, run_dir)  # before the lock creates the folder
    try:
        with stop_on_signals(), run_folder_lock(run_dir):  # one process per run folder, before any write
            return Trainer(cfg, run_dir, progress=not quiet).run(resume=resume)
    except Interrupted as exc:
        exc.run_dir = run_dir
        raise


def _default_out(cfg) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.preset or 'custom'}-{cfg.method.name}-seed{cfg.seed}-{stamp}"


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        for flag, value in (("--preset", args.preset), ("--out", args.out)):
            if value and not (flag == "--out" and Path(value).resolve() == run_dir.resolve()):
                raise UserError(
                    f"run: {flag} {value} with --resume {run_dir}: a resumed run continues with the config.yaml and "
                    f"folder it was started with; drop {flag} (or start a new run without --resume)"
                )
        cfg_file = run_dir / "config.yaml"
        if not cfg_file.is_file():
            raise UserError(f"--resume {run_dir}: not a run folder (no config.yaml); start one with `sr2lora run`")
        from .checkpoint import check_resumable
        from .run_reuse import ExperimentMismatch, folder_state

        planned = load_config(str(cfg_file), args.overrides)  # the saved config; overrides of runtime keys only
        try:
            state = folder_state(run_dir, planned)
        except ExperimentMismatch as exc:
            raise UserError(
                f"--resume: overrides would change the experiment ({', '.join(exc.changed)}); only "
                f"{', '.join(sorted(RUNTIME_KEYS))} may change. Start a new run instead."
            ) from exc
        if state == "done":
            print(f"{run_dir}: the run is finished (results.json exists); nothing to resume")
            return 0
        check_resumable(run_dir)  # before any work: the config and the checkpoint's files are the ones written
        results = _train(planned, run_dir, args.quiet, resume=True)
    else:
        if not args.preset:
            raise UserError("run: give --preset NAME (see `sr2lora presets`) or --resume RUN_DIR")
        cfg = load_config(args.preset, args.overrides)
        from .distributed import env_world_size

        if not args.out and env_world_size() > 1:  # each rank would stamp its own default folder
            raise UserError("run: a torchrun run needs --out RUN_DIR (the same folder for every process)")
        out = Path(args.out) if args.out else _default_out(cfg)
        from .run_lock import check_not_in_use
        from .run_reuse import folder_state

        check_not_in_use(out)  # a run still writing there is named by its pid
        state = folder_state(out, cfg, hint="choose another --out")
        if state == "done":
            raise UserError(f"--out {out}: already holds a run of this experiment, finished (results.json); choose "
                            f"another --out (nothing was overwritten)")
        if state == "resumable":
            raise UserError(
                f"--out {out}: already holds a run; continue it with `sr2lora run --resume {out}` or choose another "
                f"--out (nothing was overwritten)"
            )
        results = _train(cfg, out, args.quiet, resume=False)
        run_dir = out
    from .distributed import current

    if current().is_main:  # torchrun: one summary, from rank 0
        print(
            f"{results['method']}: final accuracy {_num(results['final_acc'])}%, average "
            f"{_num(results['avg_acc'])}%, forgetting {_num(results['forgetting'])}, plasticity "
            f"{_num(results['plasticity'])} ({results['num_tasks']} tasks, {results['seconds']:.0f}s) -> "
            f"{run_dir}/results.json"
        )
        empty = results.get("empty_eval_tasks") or []
        if empty:
            print(f"note: task(s) {', '.join(str(j + 1) for j in empty)} have no evaluation image; their accuracies "
                  f"are undefined (null in results.json)", file=sys.stderr)
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
    from .demo import DEMO_METHODS, default_jobs, run_demo
    from .run_lock import run_folder_lock
    from .signals import stop_on_signals

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

    from .predict import format_prediction, predict

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
    from .export import export_run

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
    from .analysis import find_run_dirs
    from .checkpoint import write_json_atomic
    from .robustness import DEFAULT_EPS, RobustnessOptions, plot_robustness, robustness_run, robustness_table

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
            write_json_atomic(run / "robustness.json", doc)
            out = Path(args.out) if args.out else run
            out.mkdir(parents=True, exist_ok=True)
            # in the run folder: robustness.png; in an --out folder that may collect several runs: by run name
            fig = plot_robustness(doc, out / (f"robustness_{run.name}.png" if args.out else "robustness.png"))
            head, rows = robustness_table(doc)
            print(f"{run}/robustness.json ({time.time() - start:.0f}s), figure {fig}")
            for row in rows:
                print("  " + "; ".join(f"{h} {c}" for h, c in zip(head, row)))
            print(doc["reading"])
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import find_run_dirs, plot_drift, run_label
    from .analyze import analyze_or_reuse
    from .checkpoint import write_json_atomic
    from .drift_margin import drift_margin_summary, plot_drift_margin

    if args.robustness:
        return cmd_robustness(args)
    docs = []
    try:
        runs = find_run_dirs(args.runs)
        for run in runs:
            doc, reused = analyze_or_reuse(run, args.samples, args.seed, args.device, recompute=args.recompute)
            docs.append((run_label(doc, run if len(runs) > 1 else None), doc))
            print(f"{run}/drift.json ({'reused' if reused else doc['source']}; {doc['samples_per_task']} samples "
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
    write_json_atomic(out / "drift_margin.json", dm)
    paths.append(plot_drift_margin(dm, out / "drift_margin.png"))
    print(f"plots: {', '.join(str(p) for p in paths)}; correlations: {out / 'drift_margin.json'}")
    print(dm["reading"])
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from .run_lock import run_folder_lock
    from .signals import check_interrupt, stop_on_signals
    from .sweep import parse_seeds, run_sweep

    out = Path(args.out) if args.out else Path("runs") / f"sweep-{Path(args.preset).stem}"
    try:
        # SIGINT/SIGTERM stop the run in progress cleanly; one sweep per folder at a time
        with stop_on_signals(), nullcontext() if args.dry_run else run_folder_lock(out):
            summary = run_sweep(args.preset, args.items, out, parse_seeds(args.seeds), dry_run=args.dry_run,
                                progress=not args.quiet, report=not args.no_report)
            check_interrupt()  # a stop asked for while the report was written is not swallowed
    except Interrupted as exc:
        print(f"interrupted; run the same `sr2lora sweep` again to continue (finished runs in {out} are skipped, "
              f"the interrupted one resumed)", file=sys.stderr)
        return exc.exit_code
    return 1 if summary["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sr2lora", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and evaluate a class-incremental run")
    r.add_argument("--preset", help="preset name (see `sr2lora presets`) or a YAML file")
    r.add_argument("--out", help="run folder (default runs/<preset>-<method>-seed<seed>-<time>)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last complete task")
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
                    help="recompute even if RUN_DIR/drift.json has the same sample")
    rb = an.add_argument_group("robustness", "--robustness: instead of the drift, how much the spectral, "
                               "batch-spectral and entry-wise losses and their gradients move under re-drawn "
                               "estimates, and Weyl's bound (RUN_DIR/robustness.json; --seed seeds the re-draws)")
    rb.add_argument("--robustness", action="store_true", help="measure robustness instead of drift")
    rb.add_argument("--task", type=int, help="current task t (0-based, >= 1; default the last); previous = t-1")
    rb.add_argument("--batch-size", type=int, help="reference batch size (default train.batch_size)")
    rb.add_argument("--draws", type=int, default=24, help="re-draws per perturbation setting (default 24)")
    rb.add_argument("--grad-draws", type=int, default=6, help="of which with a gradient (default 6)")
    rb.add_argument("--eps", help="relative feature-noise sizes, comma-separated (default 0.001,0.003,0.01,0.03,0.1)")
    rb.add_argument("--batch-sizes", help="smaller batch sizes, comma-separated (default b/2,b/4,b/8)")
    rb.add_argument("--relation-norm", help="none | l2 | trace (default the run's method.relation_norm)")
    an.set_defaults(func=cmd_analyze)

    sw = sub.add_parser("sweep", help="run a grid of settings x seeds (ablations), then report",
                        description="Items key=v1,v2 are grid axes (';' separates values when they contain commas, "
                                    "e.g. method.layers='[0,1];[2,3]'); items with one value are fixed overrides.")
    sw.add_argument("--preset", required=True)
    sw.add_argument("--out", help="sweep folder (default runs/sweep-<preset>)")
    sw.add_argument("--seeds", help="comma-separated seeds (default: the preset's seed)")
    sw.add_argument("--dry-run", action="store_true", help="print the plan only")
    sw.add_argument("--no-report", action="store_true", help="do not write OUT/report at the end")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.add_argument("items", nargs="*", metavar="KEY=VALUES", help="grid axes and fixed overrides")
    sw.set_defaults(func=cmd_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
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
        return 2
    except BrokenPipeError:  # e.g. `sr2lora presets | head`
        return 0
    except OSError as exc:  # disk full, no permission, read-only: a message, not a traceback
        from .checkpoint import WRITE_ERRNOS

        if exc.errno not in WRITE_ERRNOS:
            raise
        print(f"error: cannot write {exc.filename or 'a file'}: {exc.strerror}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        where = getattr(exc, "run_dir", None)
        if where is not None and not (Path(where) / "config.yaml").is_file():  # stopped before the run began
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

