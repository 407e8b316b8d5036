"""Load a kefu YAML file into `Settings`, turning every problem into one readable line.

An error names the file, the path inside it and what was expected, e.g.
`config/demo.yaml: ivr.main.options."1".queue: unknown queue 'sals' (queues: sales, support)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.paths import render_path
from config.schema import ReferenceProblems, Settings


class ConfigError(Exception):
    """The configuration cannot be used; `lines` are `file: path: problem`."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def demo_path() -> Path:
    return Path(__file__).resolve().parent / "demo.yaml"


def _explain(exc: ValidationError, source: str) -> list[str]:
    lines: list[str] = []
    for err in exc.errors():
        original = (err.get("ctx") or {}).get("error")
        if isinstance(original, ReferenceProblems):
            prefix = tuple(err["loc"])
            for path, message in original.problems:
                lines.append(f"{source}: {render_path(prefix + path)}: {message}")
            continue
        loc = tuple(x for x in err["loc"] if not str(x).startswith("function-"))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling)"
        elif err["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{source}: {render_path(loc)}: {message}")
    return lines


def parse(data: Any, source: str) -> Settings:
    """Validate already-parsed YAML data; `source` names it in error messages."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping of sections"])
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


def load(path: Path | str | None = None) -> Settings:
    """Read and validate a config file (the bundled demo when `path` is None)."""
    file = Path(path) if path is not None else demo_path()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{file}: {where}: invalid YAML: {problem}"]) from None
    settings = parse(data, str(file))
    base = file.parent
    return _resolve_files(settings, base, str(file))


def _resolve_files(settings: Settings, base: Path, source: str) -> Settings:
    """Prompt files are relative to the config file; check they exist now, not mid-call."""
    missing: list[str] = []

    def check(prompt: Any, where: str) -> None:
        if prompt is not None and prompt.file is not None:
            path = prompt.file if prompt.file.is_absolute() else base / prompt.file
            if not path.is_file():
                missing.append(f"{source}: {where}.file: no such WAV file: {path}")

    check(settings.music_on_hold, "music_on_hold")
    for name, queue in settings.queues.items():
        check(queue.music_on_hold, f"queues.{name}.music_on_hold")
    for name, menu in settings.ivr.items():
        for key in ("prompt", "invalid", "goodbye"):
            check(getattr(menu, key), f"ivr.{name}.{key}")
    if missing:
        raise ConfigError(missing)
    return settings
