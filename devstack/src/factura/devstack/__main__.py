"""``python -m factura.devstack up|down|status|logs``: the local stack from a terminal (``make up``).

``up`` leaves the processes running after it returns (pids in ``<data-dir>/run``), so ``down``,
``status`` and ``logs`` are separate invocations that find them through the data dir. ``up`` again
starts only what is not running (after a crash: just the dead process); ``down`` stops every
process group and then anything else carrying the data dir's marker, so nothing is left behind.
Ports come from ``--<name>-port`` or ``FACTURA_DEVSTACK_<NAME>_PORT`` (e.g. ``..._EMAIL_SENDER_PORT``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from factura.devstack import prometheus
from factura.devstack.config import ALL, EXTRAS, INFRA, SECOND_PORTS, SERVICES, StackConfig
from factura.devstack.stack import Stack, StackError


def _env_port(name: str) -> int | None:
    value = os.environ.get(f"FACTURA_DEVSTACK_{name.upper().replace('-', '_')}_PORT")
    return int(value) if value else None


def _config(args: argparse.Namespace) -> StackConfig:
    ports = {
        f"{n.replace('-', '_')}_port": getattr(args, f"{n.replace('-', '_')}_port") for n in ALL + EXTRAS + SECOND_PORTS
    }
    return StackConfig(
        data_dir=args.data_dir,
        topic_prefix=args.topic_prefix,
        mongo_database=args.mongo_database,
        **{k: v for k, v in ports.items() if v is not None},
    )


def _where(cfg: StackConfig, name: str) -> str:
    match name:
        case "kafka":
            return f"{cfg.kafka_bootstrap} (topic prefix {cfg.topic_prefix!r})"
        case "mongo":
            return f"{cfg.mongo_url}/{cfg.mongo_database}"
        case "s3":
            return f"{cfg.s3_url} (bucket {cfg.s3_bucket})"
        case "smtp":
            return f"127.0.0.1:{cfg.smtp_port} -> Maildir {cfg.maildir}, search API {cfg.smtp_api_url}"
        case "sms":
            return f"{cfg.sms_url} (captured: {cfg.sms_url}/_capture/messages)"
        case _:
            return cfg.service_url(name)


def up(args: argparse.Namespace) -> int:
    """Start what is not running; what runs already (a broker with its topics) is left alone."""
    cfg = _config(args)
    saved = StackConfig.load(cfg.data_dir)
    if saved is not None and saved != cfg and Stack(saved).running():
        print(
            f"a stack with other settings is running from {cfg.data_dir}; stop it first (down)"
            " or use the same ports, topic prefix and database",
            file=sys.stderr,
        )
        return 2
    stack = Stack(cfg, timeout_s=args.timeout)
    try:
        started = stack.up([*INFRA, *args.services])
    except StackError as e:
        print(f"devstack up failed:\n{e}\nstopped what this run had started; the rest is untouched", file=sys.stderr)
        return 1
    cfg.save()
    for name in [*INFRA, *args.services]:
        print(f"{name:<13} {_where(cfg, name)}{'' if name in started else '  (was running)'}")
    if args.prometheus and prometheus.available():
        try:
            print(f"{'prometheus':<13} {prometheus.start(cfg)}")
        except RuntimeError as e:
            print(f"prometheus did not start (the stack runs without it): {e}", file=sys.stderr)
    print(f"logs in {cfg.logs_dir}; stop with: python -m factura.devstack down --data-dir {cfg.data_dir}")
    return 0


def down(args: argparse.Namespace) -> int:
    """Stop every process of the stack, by pid file and then by marker: nothing is left behind."""
    try:
        strays = Stack(StackConfig(data_dir=args.data_dir)).stop()
    except StackError as e:
        print(f"devstack down failed: {e}", file=sys.stderr)
        return 1
    for m in strays:
        print(f"stopped leftover pid {m.pid} of {m.name or 'an unknown process'}")
    print("stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    cfg = StackConfig.load(args.data_dir) or _config(args)
    states = Stack(cfg).status()
    for s in states:
        state = "paused" if s.paused else "healthy" if s.healthy else "UNHEALTHY" if s.alive else "stopped"
        strays = f"  leftover pids {', '.join(map(str, s.strays))} (up or down ends them)" if s.strays else ""
        print(f"{s.name:<13} {state:<10} pid {s.pid or '-':<8} {_where(cfg, s.name)}{strays}")
    return 0 if all(s.healthy and not s.strays for s in states if s.alive or s.strays) else 1


def logs(args: argparse.Namespace) -> int:
    if unknown := set(args.names) - set(ALL):
        print(f"unknown process(es): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    logs_dir = StackConfig(data_dir=args.data_dir).logs_dir
    paths = {n: logs_dir / f"{n}.log" for n in args.names or ALL if (logs_dir / f"{n}.log").exists()}
    for name, path in paths.items():
        print(f"==> {name} <==")
        lines = path.read_text(errors="replace").splitlines()
        print("\n".join(lines[max(0, len(lines) - args.lines) :]))
    if args.follow:
        _follow(paths)
    return 0


def _follow(paths: dict[str, Path]) -> None:
    offsets = {name: path.stat().st_size for name, path in paths.items()}
    try:
        while True:
            for name, path in paths.items():
                start = offsets[name] if path.stat().st_size >= offsets[name] else 0  # 0: truncated
                with path.open("rb") as f:
                    f.seek(start)
                    chunk = f.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]  # leave a half-written line for the next round
                offsets[name] = start + len(complete)
                for line in complete.decode(errors="replace").splitlines():
                    print(f"{name:<13}| {line}", flush=True)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=Path(".data"), help="default: .data in the cwd")
    common.add_argument("--topic-prefix", default="")
    common.add_argument("--mongo-database", default="factura")
    for name in ALL + EXTRAS + SECOND_PORTS:
        common.add_argument(f"--{name}-port", type=int, default=_env_port(name))

    parser = argparse.ArgumentParser(prog="python -m factura.devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("up", parents=[common], help="start infra and services, detached; only what is not running")
    p.add_argument(
        "--services", nargs="*", choices=SERVICES, default=list(SERVICES), help="default: all; none: infra only"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each process gets to become healthy")
    p.add_argument(
        "--prometheus",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also start Prometheus scraping the services, if installed (default: yes)",
    )
    p.set_defaults(run=up)
    commands.add_parser("down", parents=[common], help="stop what the pid files name").set_defaults(run=down)
    commands.add_parser("status", parents=[common], help="alive/healthy per process").set_defaults(run=status)
    p = commands.add_parser("logs", parents=[common], help="tail the logs")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(ALL)}; default: all")
    p.add_argument("-n", "--lines", type=int, default=40)
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(run=logs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
