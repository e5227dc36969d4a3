"""``llray tune SPEC``: search hyperparameters and task orders, write every trial's R."""

from __future__ import annotations

import argparse
import sys

from llray.commands._common import add_ray_output_arguments, output_dir
from llray.errors import ConfigError

NAME = "tune"
EXIT_INTERRUPTED = 130  # as the command line's: Tune caught SIGINT/SIGTERM and stopped
HELP = "search hyperparameters and task orders of a study spec (Ray Tune + Optuna)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="study spec YAML (see tuning/)")
    add_ray_output_arguments(p, "STUDY")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted study without rerunning finished trials (the "
                        "optuna backend: add trials to the existing study); without it a "
                        "study name that OUTPUT already holds is refused")
    p.add_argument("--backend", choices=("tune", "optuna"), default="tune",
                   help="tune: Ray Tune + OptunaSearch (default); optuna: plain Optuna, "
                        "one trial at a time, on a storage several processes can share")
    p.add_argument("--storage", help="optuna backend: journal file or RDB URL "
                                     "(default: OUTPUT/optuna/STUDY.journal)")
    p.add_argument("--worker", type=int, help="optuna backend: this process's number among "
                                              "those sharing the study (seeds its sampler)")
    p.add_argument("--max-trials", type=int, help="optuna backend: at most this many trials "
                                                   "from this process")
    p.add_argument("--top", type=int, default=5, help="how many top trials to print")
    p.add_argument("--confirm", type=int, metavar="K",
                   help="re-run the best configuration and the baseline (the first enqueue "
                        "point) on K seeds the study never used, with intervals and a paired "
                        "test (default: the spec's confirm, 0 = none)")


def uses_embedded_ray(args: argparse.Namespace) -> bool:
    """Start the embedded Ray early (``llray.cli``): the Ray Tune backend's trials need it
    (the optuna backend runs without Ray)."""
    return args.address is None and args.backend == "tune"


def execute(args: argparse.Namespace) -> int:
    """Check everything (nothing is written before), run the study, print its summary."""
    from llray.data import make_stream
    from llray.results import check_writable
    from llray.tuning.spec import load_spec
    from llray.tuning.summary import format_summary

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    study = load_spec(args.spec)
    output = args.output = output_dir(args, study.study)
    _check_options(args)
    from llray.tuning.guard import check_name

    check_name(output, study, args.backend, args.resume, args.storage,
               joining=args.worker is not None)
    if args.backend == "tune" and study.resources.pack > 1:
        raise ConfigError("resources.pack", "the Ray Tune backend trains one trial per actor "
                                            "(docs/tuning.md, 'Packs'); use --backend optuna")
    if args.backend == "tune":
        from llray.distributed.session import loopback_only

        loopback_only()  # before Ray is first imported
        from llray.tuning.tune_backend import check_start

        check_start(output, study, args.resume)
        from llray.commands.run import check_resources

        check_resources(study.resources, args)  # embedded Ray: what no trial could get
    stream = make_stream(study.experiment.stream)
    from llray.data.streaming import refuse_streamed

    refuse_streamed(stream, NAME)  # shards read batch by batch: llray run only
    check_writable(output)
    records = _tune(study, output, stream, args) if args.backend == "tune" else \
        _optuna(study, output, stream, args)
    print(format_summary(study, records, args.top))
    confirm = study.confirm if args.confirm is None else args.confirm
    done = [r for r in records if r.status != "running"]
    if confirm and len(done) >= study.num_trials and args.worker in (None, 0):
        _confirm(study, records, confirm, output, stream)
    print(f"results: {output}")
    print(_how_to_open(study, output, args))
    ended = [r for r in records if r.status != "running"]
    if args.backend == "tune" and len(ended) < study.num_trials:
        print(f"study interrupted after {len(ended)} of {study.num_trials} trials; continue "
              f"with: llray tune {args.spec} --output {output} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if any(r.status == "failed" for r in records) else 0


def interrupted_hint(args: argparse.Namespace) -> str:
    """How to continue after SIGINT/SIGTERM (the command line exits 130 with it)."""
    where = f" --output {args.output}" if args.output else ""
    return f"continue the study with: llray tune {args.spec}{where} --resume"


def _confirm(study, records, k: int, output: str, stream) -> None:
    from llray.tuning.confirm import format_confirm, run_confirm

    def progress(c, seed, res) -> None:
        print(f"confirm {c.role}: seed {seed} {res.status}", file=sys.stderr, flush=True)

    import torch

    torch.set_num_threads(max(1, int(study.resources.num_cpus)))  # runs in this process
    print(f"confirming on {k} fresh seeds", file=sys.stderr, flush=True)
    print(format_confirm(study, run_confirm(study, records, k, output, stream, progress)))


def _how_to_open(study, output: str, args: argparse.Namespace) -> str:
    from llray.tuning.summary import how_to_open

    if args.backend == "tune":
        from llray.tuning.tune_backend import study_dir

        return how_to_open(study, "tune", study_dir(output, study))
    from llray.tuning.optuna_backend import default_storage

    return how_to_open(study, "optuna", args.storage or default_storage(output, study))


def _check_options(args: argparse.Namespace) -> None:
    if args.backend == "tune" and (args.storage or args.worker is not None or args.max_trials):
        raise ConfigError("--storage", "--storage, --worker and --max-trials are for "
                                       "--backend optuna")
    if args.backend == "optuna" and args.address:
        raise ConfigError("--address", "the optuna backend does not use Ray; share a "
                                       "--storage between processes instead")
    if args.confirm is not None and args.confirm < 0:
        raise ConfigError("--confirm", f"must be >= 0 (0: no confirmation), got {args.confirm}")
    if args.max_trials is not None and args.max_trials < 1:
        raise ConfigError("--max-trials", f"must be >= 1, got {args.max_trials}")


def _tune(study, output: str, stream, args: argparse.Namespace) -> list:
    from llray.distributed.session import connect
    from llray.tuning.tune_backend import run_tune

    connect(args.address, args.num_cpus, dashboard=args.dashboard)
    return run_tune(study, output, resume=args.resume, stream=stream)


def _optuna(study, output: str, stream, args: argparse.Namespace) -> list:
    from llray.tuning.optuna_backend import default_storage, run_optuna

    storage = args.storage or default_storage(output, study)

    def progress(record) -> None:
        shown = record.objectives or {f"{o}_seen": v for o, v in record.seen.items()}
        values = " ".join(f"{o}={v:.4f}" for o, v in shown.items())
        print(f"trial {record.trial}: {record.status} after {record.tasks_learned} tasks "
              f"{values}", file=sys.stderr, flush=True)

    return run_optuna(study, output, storage, args.worker, stream, max_trials=args.max_trials,
                      on_trial=progress)
