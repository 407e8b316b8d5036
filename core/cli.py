"""The `kefu` command: `serve`, `core`, `worker`, `config check|reload`, `acd replay`,
`import customers`, `db upgrade`.

Each subcommand imports only what it runs, so a worker process never loads FastAPI or
SQLAlchemy and `kefu config check` starts in a blink.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any


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
    for note in result.get("notes", []):
        print(f"note: {note}")
    return 0


def _database(prog: str, argv: list[str], *, file: bool = False) -> tuple[argparse.Namespace, Any]:
    """Parse `argv` with the options every database command shares; open the store."""
    from config.loader import ConfigError, demo_path, load
    from crm_link.store import CallStore, database_url

    parser = argparse.ArgumentParser(prog=prog)
    if file:
        parser.add_argument("file", type=Path)
        parser.add_argument("--rejects", type=Path, default=None, help="write rejected rows here")
    parser.add_argument("--config", type=Path, default=None, help="default: the demo")
    parser.add_argument("--data-dir", type=Path, default=Path("var"))
    parser.add_argument("--database", default=None, help="SQLAlchemy URL (default: the config's)")
    parser.add_argument("--region", default=None, help="phone region of numbers without +CC")
    args = parser.parse_args(argv)
    try:
        settings = load((args.config or demo_path()).resolve())
    except ConfigError as exc:
        print(f"{prog}: invalid configuration\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    crm = getattr(settings, "crm", None)  # the `crm:` section, once the schema has it
    region = (args.region or getattr(crm, "region", None) or "US").upper()
    from crm_link.phones import valid_region

    if not valid_region(region):
        print(f"{prog}: unknown phone region {region!r} (e.g. US, DE, CN)", file=sys.stderr)
        raise SystemExit(2)
    url = args.database or settings.database.url
    if url is None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    return args, CallStore(database_url(url, args.data_dir), region=region, migrate=False)


def _db(argv: list[str]) -> int:
    """`kefu db upgrade`: bring the database schema to the newest revision."""
    if argv[:1] != ["upgrade"]:
        print("usage: kefu db upgrade [--config FILE] [--data-dir DIR] [--database URL]",
              file=sys.stderr)  # fmt: skip
        return 2
    from sqlalchemy.exc import SQLAlchemyError

    _args, store = _database("kefu db upgrade", argv[1:])
    try:
        before, after = store.upgrade()
    except SQLAlchemyError as exc:
        where = store.engine.url.render_as_string(hide_password=True)
        print(f"kefu db upgrade: {where}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    where = store.engine.url.render_as_string(hide_password=True)
    if before == after:
        print(f"{where}: already at {after}")
    else:
        print(f"{where}: {before or 'empty'} -> {after}")
    return 0


def _import(argv: list[str]) -> int:
    """`kefu import customers FILE.csv`: see `crm_link.importer`. Exit 0: every row in;
    1: some rows rejected (the others are in); 2: nothing done."""
    if argv[:1] != ["customers"]:
        print("usage: kefu import customers FILE.csv [--config FILE] [--data-dir DIR] "
              "[--database URL] [--region CC] [--rejects OUT.csv]", file=sys.stderr)  # fmt: skip
        return 2
    from datetime import UTC, datetime

    from sqlalchemy.exc import SQLAlchemyError

    from crm_link.importer import ImportFileError, import_customers, write_rejects

    args, store = _database("kefu import customers", argv[1:], file=True)
    bar = _ProgressBar(sys.stderr)
    try:
        store.upgrade()
        report = import_customers(store, args.file, now=datetime.now(UTC), progress=bar.update)
    except ImportFileError as exc:
        print(f"kefu import customers: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        where = store.engine.url.render_as_string(hide_password=True)
        print(f"kefu import customers: {where}: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.done()
        store.close()
    if report.ignored_columns:
        print(f"ignored columns: {', '.join(report.ignored_columns)}")
    print(report.summary())
    if report.rejected:
        print("rejected rows:")
        for rejected in report.rejected:
            print(f"  line {rejected.line}: {rejected.reason}")
        if args.rejects is not None:
            write_rejects(report, args.rejects)
            print(f"rejected rows written to {args.rejects}")
    return 1 if report.rejected else 0


class _ProgressBar:
    """`[#####.....] 512/1000` redrawn in place on a terminal; on a pipe or a file, a
    line at every 10 %."""

    def __init__(self, out: Any, width: int = 40) -> None:
        self.out, self.width = out, width
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.shown = -1

    def update(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        if self.tty:
            filled = int(share * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            self.out.write(f"\r[{bar}] {done}/{total}")
            self.out.flush()
            self.shown = done
        elif int(share * 10) > self.shown or done == total:
            self.shown = int(share * 10)
            self.out.write(f"imported {done}/{total} rows ({share:.0%})\n")

    def done(self) -> None:
        if self.tty and self.shown >= 0:
            self.out.write("\n")


def _passwd() -> int:
    """Read a password (twice at a terminal, once from a pipe) and print its hash for
    `password_hash:` in the configuration; the password itself is never stored."""
    import getpass

    from softphone_web.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("kefu passwd: the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("kefu passwd: use at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
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
    commands = {"serve", "core", "worker", "config", "acd", "import", "db", "passwd"}
    if not argv or argv[0] not in commands:
        print(
            "usage: kefu {serve,core,worker,config,acd,import,db,passwd} ...\n"
            "  serve         run the whole contact center (broker, edge, workers, core)\n"
            "  core          run the decision process only\n"
            "  worker        run one pjsua2 media worker\n"
            "  config check  validate a configuration or flow file\n"
            "  config reload load the running center's IVR flows again (new calls)\n"
            "  acd replay    re-run a recorded queue journal against a candidate policy\n"
            "  import customers FILE.csv  add or update customers from a spreadsheet\n"
            "  db upgrade    bring the database schema to the newest revision\n"
            "  passwd        print the password_hash of a web sign-in password",
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
    if command == "passwd":
        return _passwd()
    if command == "core":
        return _core(rest)
    if command == "acd":
        if rest[:1] != ["replay"]:
            print("usage: kefu acd replay EVENTS --policy FILE", file=sys.stderr)
            return 2
        from acd.replay import main as replay

        return replay(rest[1:])
    if command == "import":
        return _import(rest)
    if command == "db":
        return _db(rest)
    return _config(rest)


if __name__ == "__main__":
    sys.exit(main())
