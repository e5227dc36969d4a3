"""``llray submit JOB.yaml --output /ABS``: run ``llray run`` on a Ray cluster as a job.

A thin layer over Ray's :class:`~ray.job_submission.JobSubmissionClient` (what ``ray job
submit`` uses) that does what an llray sweep needs on a cluster:

- uploads the checkout (``--working-dir``, default ``.``) without what its checked-in
  ``.rayignore`` lists (``.venv``, ``results``, ``.git``, caches);
- runs ``llray run JOB --address auto --output /ABS`` as the entrypoint, with ``llray``
  from the PATH of the cluster's Ray (the node install of ``cluster.yaml``) or, when
  there is none, with the Python ``llray submit`` runs in if the head has it (a head
  started from this virtualenv on this machine); the uploaded code comes first on
  the driver's and the actors' ``PYTHONPATH`` either way;
- gives the driver a stop grace period (``RAY_JOB_STOP_WAIT_TIME_S``), so that ``ray job
  stop`` ends the sweep on its interrupt path (exit 130, checkpoints kept) rather than
  with SIGKILL after Ray's default 3 s;
- prints the job id and the commands that follow, stop and resume it.

Token authentication is Ray's own: with ``RAY_AUTH_MODE=token`` the token comes from
``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``. A
missing token file, or a token the cluster rejects, is one line on stderr and exit 2
before anything is uploaded.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import sys
import time
from pathlib import Path, PurePosixPath

from llray.errors import ConfigError

NAME = "submit"
HELP = "submit an experiment to a Ray cluster as a job ('llray run' there, with its uploads)"
EXCLUDES_FILE = ".rayignore"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # where `ray dashboard cluster.yaml` forwards
STOP_GRACE_S = 60  # seconds from `ray job stop`'s SIGTERM to Ray's SIGKILL
RESERVED = ("--address", "--output", "--resume")  # set by llray submit itself


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output",
                   help="required: absolute results directory on the cluster (storage "
                        "every node sees on a multi-node cluster); the job's own "
                        "directory is deleted when it ends")
    p.add_argument("--address",
                   help="the cluster's job API (default: $RAY_API_SERVER_ADDRESS, "
                        f"$RAY_ADDRESS, or {DEFAULT_ADDRESS}, where 'ray dashboard "
                        "cluster.yaml' forwards it)")
    p.add_argument("--working-dir", default=".",
                   help=f"directory uploaded as the job's working directory, without what "
                        f"its {EXCLUDES_FILE} lists (default: .)")
    p.add_argument("--resume", action="store_true",
                   help="continue an earlier job with the same --output (llray run --resume)")
    p.add_argument("--submission-id", help="job id (default: llray-EXPERIMENT-TIME-RANDOM)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    _options(p)
    p.add_argument("config", help="experiment YAML inside --working-dir (see jobs/)")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="... -- RUN_FLAGS",
                   help="more 'llray run' flags after '--', e.g. -- --max-in-flight 16")


def split_rest(args: argparse.Namespace) -> list[str]:
    """Parse the options given after CONFIG into ``args``; return the flags after ``--``
    (argparse alone cannot tell them apart under a subcommand)."""
    own, run = list(args.rest or []), []
    if "--" in own:
        i = own.index("--")
        own, run = own[:i], own[i + 1:]
    if own:
        q = argparse.ArgumentParser(prog="llray submit", add_help=False)
        _options(q)
        q.parse_args(own, namespace=args)
    return run


def execute(args: argparse.Namespace) -> int:
    """Check everything locally, submit, print the job id and what to do next."""
    plan = make_plan(args)
    client = connect(plan.address)
    job_id = client.submit_job(entrypoint=plan.entrypoint, runtime_env=plan.runtime_env,
                               submission_id=plan.submission_id,
                               metadata={"llray_experiment": plan.experiment,
                                         "llray_output": plan.output})
    print(hints(job_id, plan))
    return 0


class Plan:
    """Everything a submission sends, worked out and checked before contacting Ray."""

    def __init__(self, address: str, experiment: str, output: str, entrypoint: str,
                 runtime_env: dict, submission_id: str, resume_cmd: str) -> None:
        self.address = address
        self.experiment = experiment
        self.output = output
        self.entrypoint = entrypoint
        self.runtime_env = runtime_env
        self.submission_id = submission_id
        self.resume_cmd = resume_cmd


def make_plan(args: argparse.Namespace) -> Plan:
    """Check the arguments and build the job; raises :class:`ConfigError` on bad input."""
    from llray.config import load_config

    run_args = split_rest(args)
    wd = Path(args.working_dir).resolve()
    if not wd.is_dir():
        raise ConfigError("--working-dir", f"not a directory: {args.working_dir}")
    cfg = load_config(args.config)
    rel = _inside(Path(args.config).resolve(), wd)
    output = _absolute_output(args.output)
    for a in run_args:
        if a.split("=", 1)[0] in RESERVED:
            raise ConfigError("RUN_FLAGS", f"{a.split('=', 1)[0]} is set by llray submit; "
                                           "pass it to llray submit itself")
    check_token()
    llray_args = ["run", rel.as_posix(), "--address", "auto", "--output", output,
                  *(["--resume"] if args.resume else []), *run_args]
    runtime_env = {
        "working_dir": str(wd),
        "excludes": read_excludes(wd),
        "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)},
    }
    address = args.address or (os.environ.get("RAY_API_SERVER_ADDRESS")
                               or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS)
    sid = args.submission_id or (f"llray-{cfg.experiment}-"
                                 f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-"
                                 f"{secrets.token_hex(2)}")
    resume = ["llray", "submit", args.config, "--address", address, "--output", output,
              "--working-dir", args.working_dir, "--resume",
              *(["--", *run_args] if run_args else [])]
    return Plan(address, cfg.experiment, output, entrypoint(llray_args, sys.executable),
                runtime_env, sid, shlex.join(resume))


def _inside(config: Path, wd: Path) -> PurePosixPath:
    try:
        return PurePosixPath(config.relative_to(wd).as_posix())
    except ValueError:
        raise ConfigError("config", f"{config} is not inside --working-dir {wd}: the job "
                                    "reads it from the uploaded directory") from None


def _absolute_output(output: str | None) -> str:
    if output is None:
        raise ConfigError("--output", "required: an absolute path on the cluster, where "
                                      "the job writes its results")
    if not PurePosixPath(output).is_absolute():
        raise ConfigError("--output", f"must be an absolute path on the cluster, got "
                                      f"{output!r} (a job's working directory is deleted "
                                      "when the job ends)")
    return output


def read_excludes(wd: Path) -> list[str]:
    """The patterns of ``wd/.rayignore`` (gitignore syntax), or none if it has none."""
    path = wd / EXCLUDES_FILE
    if not path.is_file():
        return []
    lines = (ln.strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def entrypoint(llray_args: list[str], python: str) -> str:
    """The job's shell command: ``llray ARGS`` from the cluster's PATH, else from
    ``python`` (the submitting interpreter) if the node has it with llray's dependencies,
    else a one-line error and exit 127.

    >>> "exec llray run job.yaml" in entrypoint(["run", "job.yaml"], "/venv/bin/python")
    True
    """
    args = shlex.join(llray_args)
    py = shlex.quote(python)
    missing = shlex.quote(
        "llray: error: llray is not on the PATH of the cluster's Ray and "
        f"{python} (the Python of llray submit) is not on this node: install llray on "
        "every node (pip install 'llray[cluster]', as cluster.yaml does) or start Ray "
        "with the environment that has it on PATH")
    return (f"if command -v llray >/dev/null 2>&1; then exec llray {args}; "
            f"elif {py} -c 'import llray.cli, ray, torch' >/dev/null 2>&1; "
            f"then exec {py} -m llray.cli {args}; "
            f"else echo {missing} >&2; exit 127; fi")


def check_token() -> None:
    """With ``RAY_AUTH_MODE=token``, the token Ray will send must exist (Ray's order:
    ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
    field = "RAY_AUTH_TOKEN_PATH" if named else "token"
    try:
        ok = bool(path.read_text().strip())
    except OSError:
        ok = False
    if not ok:
        raise ConfigError(field, f"RAY_AUTH_MODE=token but no token in {path}: copy the "
                                 "cluster's token there ('ray get-auth-token' on the head "
                                 "prints it)")


def connect(address: str):
    """A job client for ``address``; an unreachable API or a refused token is a
    :class:`ConfigError`."""
    try:
        import requests
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:
        raise ConfigError("install", f"llray submit needs Ray's job client ({e}): "
                                     "pip install 'llray[cluster]'") from None

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise ConfigError("token", _auth_problem(str(e), address)) from None
    except (ConnectionError, requests.RequestException) as e:
        raise ConfigError("--address", f"no Ray job API answers at {address} ({e}); start "
                                       "the tunnel with 'ray dashboard cluster.yaml' or "
                                       "pass the head's dashboard URL") from None


def _auth_problem(text: str, address: str) -> str:
    if text.startswith("Authentication failed"):  # HTTP 403
        return (f"the cluster at {address} rejected the token (HTTP 403): use the "
                "cluster's own token ('ray get-auth-token' on the head)")
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (f"the cluster at {address} requires a token (HTTP 401): export "
                "RAY_AUTH_MODE=token and put the cluster's token in ~/.ray/auth_token")
    return f"the cluster at {address} received no token (HTTP 401)"


def hints(job_id: str, plan: Plan) -> str:
    """What ``llray submit`` prints: the job id and how to follow, stop and resume it."""
    a = shlex.quote(plan.address)
    return "\n".join([
        f"submitted job {job_id} to {plan.address}",
        f"  follow:  ray job logs --address {a} --follow {job_id}",
        f"  status:  ray job status --address {a} {job_id}",
        f"  stop:    ray job stop --address {a} {job_id}   (checkpoints are kept)",
        f"  resume:  {plan.resume_cmd}",
        f"results on the cluster: {plan.output}",
    ])
