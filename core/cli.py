"""The `kefu` command: `serve`, `core`, `worker`, `config check`.

Each subcommand imports only what it runs, so a worker process never loads FastAPI or
SQLAlchemy and `kefu config check` starts in a blink.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path


def _core(argv: list[str]) -> int:
    from config.loader import ConfigError, demo_path, load
    from core.app import Core

    parser = argparse.ArgumentParser(prog="kefu core")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=Path("var"))
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    config_path = (args.config or demo_path()).resolve()
    try:
        settings = load(config_path)
    except ConfigError as exc:
        print(f"kefu core: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    args.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(Core(settings, args.data_dir.resolve(), config_path.parent).run())
    return 0


def _config(argv: list[str]) -> int:
    from config.loader import ConfigError, load

    parser = argparse.ArgumentParser(prog="kefu config")
    parser.add_argument("action", choices=["check"])
    parser.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        load(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.file}: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve", "core", "worker", "config", "acd"}
    if not argv or argv[0] not in commands:
        print(
            "usage: kefu {serve,core,worker,config,acd} ...\n"
            "  serve         run the whole contact center (broker, edge, workers, core)\n"
            "  core          run the decision process only\n"
            "  worker        run one pjsua2 media worker\n"
            "  config check  validate a configuration file\n"
            "  acd replay    re-run a recorded queue journal against a candidate policy",
            file=sys.stderr,
        )
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    command, rest = argv[0], argv[1:]
    if command == "serve":
        from pbx.serve import main as serve

        return serve(rest)
    if command == "worker":
        from pbx.worker import main as worker

        return worker(rest)
    if command == "core":
        return _core(rest)
    if command == "acd":
        if rest[:1] != ["replay"]:
            print("usage: kefu acd replay EVENTS --policy FILE", file=sys.stderr)
            return 2
        from acd.replay import main as replay

        return replay(rest[1:])
    return _config(rest)


if __name__ == "__main__":
    sys.exit(main())
