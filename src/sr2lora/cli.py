"""Command line: ``sr2lora run | presets | demo | ...`` — parse, call, print; the work is elsewhere."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see sr2lora/__init__.py)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from .config import ConfigError, load_config, load_preset_dict, parse_overrides, preset_names  # noqa: E402

# Keys that may differ when resuming: they change where or how fast a run computes, not what it computes.
RESUME_SAFE_KEYS = {"train.device", "train.threads", "data.num_workers", "data.root", "train.eval_batch_size"}


class UserError(Exception):
    """An error whose message is the whole story: printed without a traceback, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .data.base import DataError
    from .engine import TrainingError
    from .models.backbone import WeightsError

    return (UserError, ConfigError, DataError, WeightsError, CheckpointError, TrainingError)


def _default_out(cfg) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.preset or 'custom'}-{cfg.method.name}-seed{cfg.seed}-{stamp}"


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "timm_kwargs":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from .engine import Trainer

    if args.resume:
        run_dir = Path(args.resume)
        cfg_file = run_dir / "config.yaml"
        if not cfg_file.is_file():
            raise UserError(f"--resume {run_dir}: not a run folder (no config.yaml); start one with `sr2lora run`")
        if (run_dir / "results.json").is_file():
            print(f"{run_dir}: the run is finished (results.json exists); nothing to resume")
            return 0
        saved = load_config(str(cfg_file))
        if args.overrides:
            new = load_config(str(cfg_file), args.overrides)
            a, b = _flatten(saved.to_dict()), _flatten(new.to_dict())
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_SAFE_KEYS)
            if changed:
                raise UserError(
                    f"--resume: overrides would change the experiment ({', '.join(changed)}); only "
                    f"{', '.join(sorted(RESUME_SAFE_KEYS))} may change. Start a new run instead."
                )
            saved = new
        trainer = Trainer(saved, run_dir, progress=not args.quiet)
        results = trainer.run(resume=True)
    else:
        if not args.preset:
            raise UserError("run: give --preset NAME (see `sr2lora presets`) or --resume RUN_DIR")
        cfg = load_config(args.preset, args.overrides)
        out = Path(args.out) if args.out else _default_out(cfg)
        if (out / "config.yaml").exists() or (out / "results.json").exists():
            raise UserError(
                f"--out {out}: already holds a run; continue it with `sr2lora run --resume {out}` or choose another "
                f"--out (nothing was overwritten)"
            )
        trainer = Trainer(cfg, out, progress=not args.quiet)
        results = trainer.run()
        run_dir = out
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

    ps = sub.add_parser("presets", help="list the shipped presets")
    ps.set_defaults(func=cmd_presets)

    c = sub.add_parser("config", help="print the resolved config of a preset with overrides")
    c.add_argument("--preset", required=True)
    c.add_argument("overrides", nargs="*")
    c.set_defaults(func=cmd_show_config)
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

