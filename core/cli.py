"""The `kefu` command: `serve`, `core`, `worker`, `config check|reload`, `acd replay`.

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
    from recording.prompts import espeak_voices

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
        settings = load(config_path, voices=espeak_voices())
    except ConfigError as exc:
        print(f"kefu core: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    args.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(Core(settings, args.data_dir.resolve(), config_path).run())
    return 0


def _config(argv: list[str]) -> int:
    from config.loader import ConfigError, demo_path, load

    parser = argparse.ArgumentParser(
        prog="kefu config",
        description="Validate a kefu configuration, or an IVR flow file (top level `ivr:` "
        "with flow nodes) against the queues and skills of a configuration.",
    )
    parser.add_argument("action", choices=["check", "reload"])
    parser.add_argument(
        "file",
        type=Path,
        nargs="?",
        default=None,
        help="check: the file; reload: the "
        "running center's configuration (default: the demo), for its HTTP address",
    )
    parser.add_argument(
        "--against", type=Path, default=None, help="configuration for a flow file (default: demo)"
    )
    args = parser.parse_args(argv)
    if args.action == "reload":
        return _reload(args.file or demo_path())
    if args.file is None:
        parser.error("check needs a FILE")
    try:
        if _is_flow_file(args.file):
            from ivr.validate import check_file

            against = args.against or demo_path()
            settings = load(against)
            skills = {s for q in settings.queues.values() for s in q.required}
            _, problems = check_file(
                args.file,
                queues=settings.queues,
                skills=skills,
                agents=settings.agents,
                base=against.parent,
            )
            if problems:
                raise ConfigError(problems)
        else:
            from recording.prompts import espeak_voices

            load(args.file, voices=espeak_voices())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.file}: ok")
    return 0


def _reload(config: Path) -> int:
    """Ask the running core to load its flows again; print the new version or why not."""
    import json
    import urllib.error
    import urllib.request

    from config.loader import ConfigError, load

    try:
        http = load(config).http
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host
    url = f"http://{host}:{http.port}/api/config/reload"
    request = urllib.request.Request(url, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            result = json.load(response)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            problems = json.loads(body).get("errors") or [body]
        except ValueError:
            problems = [body]
        print("reload refused; the running flows are unchanged:", file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kefu config reload: no core at {url}: {exc}", file=sys.stderr)
        return 1
    print(f"flows reloaded: version {result['version']} ({', '.join(result['flows'])})")
    return 0


def _is_flow_file(path: Path) -> bool:
    """A flow file has only `ivr:` at the top and its flows have `nodes`."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False  # the config loader reports it properly
    if not isinstance(data, dict) or set(data) != {"ivr"} or not isinstance(data["ivr"], dict):
        return False
    return all(isinstance(f, dict) and "nodes" in f for f in data["ivr"].values())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve", "core", "worker", "config", "acd"}
    if not argv or argv[0] not in commands:
        print(
            "usage: kefu {serve,core,worker,config,acd} ...\n"
            "  serve         run the whole contact center (broker, edge, workers, core)\n"
            "  core          run the decision process only\n"
            "  worker        run one pjsua2 media worker\n"
            "  config check  validate a configuration or flow file\n"
            "  config reload load the running center's IVR flows again (new calls)\n"
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
