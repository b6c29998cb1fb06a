"""Command line: ``sr2lora run | presets | demo | ...`` — parse, call, print; the work is elsewhere."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see sr2lora/__init__.py)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from .config import ConfigError, flatten, load_config, load_preset_dict, parse_overrides, preset_names  # noqa: E402
from .signals import Interrupted  # noqa: E402

# Keys that may differ when resuming: they change where or how fast a run computes, not what it computes.
RESUME_SAFE_KEYS = {"train.device", "train.threads", "data.num_workers", "data.root", "train.eval_batch_size"}


class UserError(Exception):
    """An error whose message is the whole story: printed without a traceback, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .data.base import DataError
    from .engine import TrainingError
    from .models.backbone import WeightsError
    from .models.imgfocus import ImgFocusUnavailableError, OnnxConversionError
    from .preflight import OutputError

    return (UserError, ConfigError, DataError, WeightsError, CheckpointError, TrainingError, OutputError,
            ImgFocusUnavailableError, OnnxConversionError)


def _train(cfg, run_dir: Path, quiet: bool, resume: bool) -> dict:
    """Trainer(cfg, run_dir).run() with SIGINT/SIGTERM turned into a clean stop (see sr2lora.signals)."""
    from .engine import Trainer
    from .signals import Interrupted, stop_on_signals

    try:
        with stop_on_signals():
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
        cfg_file = run_dir / "config.yaml"
        if not cfg_file.is_file():
            raise UserError(f"--resume {run_dir}: not a run folder (no config.yaml); start one with `sr2lora run`")
        if (run_dir / "results.json").is_file():
            print(f"{run_dir}: the run is finished (results.json exists); nothing to resume")
            return 0
        from .checkpoint import check_config_unchanged

        check_config_unchanged(run_dir)  # before any work: config.yaml must be the one the checkpoint used
        saved = load_config(str(cfg_file))
        if args.overrides:
            new = load_config(str(cfg_file), args.overrides)
            a, b = flatten(saved.to_dict()), flatten(new.to_dict())
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_SAFE_KEYS)
            if changed:
                raise UserError(
                    f"--resume: overrides would change the experiment ({', '.join(changed)}); only "
                    f"{', '.join(sorted(RESUME_SAFE_KEYS))} may change. Start a new run instead."
                )
            saved = new
        results = _train(saved, run_dir, args.quiet, resume=True)
    else:
        if not args.preset:
            raise UserError("run: give --preset NAME (see `sr2lora presets`) or --resume RUN_DIR")
        cfg = load_config(args.preset, args.overrides)
        from .distributed import env_world_size

        if not args.out and env_world_size() > 1:  # each rank would stamp its own default folder
            raise UserError("run: a torchrun run needs --out RUN_DIR (the same folder for every process)")
        out = Path(args.out) if args.out else _default_out(cfg)
        if (out / "config.yaml").exists() or (out / "results.json").exists():
            raise UserError(
                f"--out {out}: already holds a run; continue it with `sr2lora run --resume {out}` or choose another "
                f"--out (nothing was overwritten)"
            )
        results = _train(cfg, out, args.quiet, resume=False)
        run_dir = out
    from .distributed import current

    if current().is_main:  # torchrun: one summary, from rank 0
        print(
            f"{results['method']}: final accuracy {results['final_acc']:.2f}%, average {results['avg_acc']:.2f}%, "
            f"forgetting {results['forgetting']:.2f}, plasticity {results['plasticity']:.2f} "
            f"({results['num_tasks']} tasks, {results['seconds']:.0f}s) -> {run_dir}/results.json"
        )
    return 0


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

    cfg = load_config(args.preset, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_METHODS, run_demo

    methods = tuple(args.methods.split(",")) if args.methods else DEMO_METHODS
    run_demo(args.preset, args.out, methods, args.overrides, fresh=args.fresh, progress=not args.quiet)
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
    if bad:
        print(f"{bad} of {len(entries)} files could not be read as images", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    out = export_run(args.run, args.out, task=args.task)
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
        extra = f", vs frozen {gain['final_acc']:+.2f}" if gain else ""
        print(f"{g['preset']}/{g['name']}: n={g['n']}, A_T {m['final_acc']['mean']:.2f} ± {m['final_acc']['std']:.2f}, "
              f"Ā {m['avg_acc']['mean']:.2f} ± {m['avg_acc']['std']:.2f}{extra}")
    print(f"{doc['num_runs']} runs -> {out}/report.md, report.html, report.json, {len(doc['figures'])} figures")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze_or_reuse, find_run_dirs, plot_drift, run_label

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
    print(f"plots: {', '.join(str(p) for p in paths)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import parse_seeds, run_sweep

    out = Path(args.out) if args.out else Path("runs") / f"sweep-{Path(args.preset).stem}"
    summary = run_sweep(args.preset, args.items, out, parse_seeds(args.seeds), dry_run=args.dry_run,
                        progress=not args.quiet, report=not args.no_report)
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
    d.add_argument("--quiet", action="store_true")
    d.add_argument("overrides", nargs="*", help="dotted key=value overrides applied to every method")
    d.set_defaults(func=cmd_demo)

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
    except _user_errors() as exc:
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
        where = getattr(exc, "run_dir", None) or "RUN_DIR"
        print(f"interrupted; resume with sr2lora run --resume {where}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

