"""Load a kefu YAML file into `Settings`, turning every problem into one readable line.

An error names the file, the path inside it and what was expected, e.g.
`config/flows/demo.yaml: ivr.main.nodes.sales_menu.options."1": unknown node 'salse'`.
Flow files (`flow_files:`) are read here and their flows joined to the inline `ivr:`
section before validation; a problem inside one of them names that file. WAV prompts
are looked up now, relative to the main configuration file, not mid-call.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.paths import render_path
from config.schema import Prompt as ConfigPrompt
from config.schema import ReferenceProblems, Settings
from ivr.schema import Flow, FlowFile
from ivr.validate import clean_loc


class ConfigError(Exception):
    """The configuration cannot be used; `lines` are `file: path: problem`."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def demo_path() -> Path:
    return Path(__file__).resolve().parent / "demo.yaml"


def _message(err: Any) -> str:
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check the spelling)"
    elif err["type"] == "missing":
        message = "required key is missing"
    return message


def _explain(exc: ValidationError, source: str, flow_sources: dict[str, str]) -> list[str]:
    """`flow_sources`: flow name -> the file it came from (for problems inside it)."""
    lines: list[str] = []

    def where(path: tuple[str | int, ...]) -> str:
        if len(path) >= 2 and path[0] == "ivr" and str(path[1]) in flow_sources:
            return flow_sources[str(path[1])]
        return source

    for err in exc.errors():
        original = (err.get("ctx") or {}).get("error")
        if isinstance(original, ReferenceProblems):
            prefix = tuple(err["loc"])
            for path, message in original.problems:
                full = prefix + path
                lines.append(f"{where(full)}: {render_path(full)}: {message}")
            continue
        loc = clean_loc(x for x in err["loc"] if not str(x).startswith("function-"))
        lines.append(f"{where(loc)}: {render_path(loc)}: {_message(err)}")
    return lines


def _read_yaml(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{file}: {where}: invalid YAML: {problem}"]) from None


def _load_flow_files(data: dict[str, Any], base: Path, source: str) -> dict[str, str]:
    """Join the flows of `data["flow_files"]` into `data["ivr"]`; name -> file."""
    files = data.get("flow_files") or []
    if not isinstance(files, list):
        return {}  # the schema says what is wrong with it
    inline = data.get("ivr")
    flows: dict[str, Any] = dict(inline) if isinstance(inline, dict) else {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for i, entry in enumerate(files):
        if not isinstance(entry, str):
            problems.append(f"{source}: flow_files.{i}: expected a file name")
            continue
        file = Path(entry) if Path(entry).is_absolute() else base / entry
        raw = _read_yaml(file)
        try:
            loaded = FlowFile.model_validate(raw).ivr
        except ValidationError as exc:
            for err in exc.errors():
                loc = clean_loc(err["loc"])
                problems.append(f"{file}: {render_path(loc)}: {_message(err)}")
            continue
        for name, flow in loaded.items():
            if name in flows:
                other = sources.get(name, source)
                problems.append(f"{file}: ivr.{name}: flow {name!r} is also defined in {other}")
                continue
            flows[name] = flow
            sources[name] = str(file)
    if problems:
        raise ConfigError(problems)
    if sources:
        data["ivr"] = flows
    return sources


def parse(data: Any, source: str, base: Path | None = None) -> Settings:
    """Validate already-parsed YAML data; `source` names it in error messages and
    `base` (default: the current directory) is where `flow_files` are found."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping of sections"])
    data = dict(data)
    flow_sources = _load_flow_files(data, base or Path.cwd(), source)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source, flow_sources)) from None


def load(path: Path | str | None = None, *, voices: Collection[str] | None = None) -> Settings:
    """Read and validate a config file (the bundled demo when `path` is None).

    `voices`: the voices the text-to-speech has (`recording.prompts.espeak_voices()`);
    when given, a text prompt in any other voice is an error now, not mid-call."""
    file = Path(path) if path is not None else demo_path()
    settings = parse(_read_yaml(file), str(file), file.parent)
    return _resolve_files(settings, file.parent, str(file), voices)


def flow_file_prompts(flow: Flow) -> Iterator[tuple[tuple[str | int, ...], Path]]:
    """(path inside the flow, file) of every WAV prompt of a flow."""
    for node_name, node in flow.nodes.items():
        for slot, localized in node.prompt_slots():
            for language, prompt in localized.items():
                if prompt.file is not None:
                    yield ("nodes", node_name, *slot, language, "file"), prompt.file
    for language, table in flow.digits.items():
        for digit, prompt in table.items():
            if prompt.file is not None:
                yield ("digits", language, digit, "file"), prompt.file


def flow_text_voices(flow: Flow) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(path inside the flow, voice) of every text prompt of a flow, as it will be spoken."""
    for language in flow.languages:
        yield ("voices", language), flow.voice(language)
    for node_name, node in flow.nodes.items():
        for slot, localized in node.prompt_slots():
            for language, prompt in localized.items():
                if prompt.text is not None and prompt.voice is not None:
                    yield ("nodes", node_name, *slot, language, "voice"), prompt.voice


def _resolve_files(
    settings: Settings, base: Path, source: str, voices: Collection[str] | None
) -> Settings:
    """Prompt files are relative to the config file; check they exist now, not mid-call.
    Text prompts must name voices the text-to-speech has (when `voices` is given)."""
    missing: list[str] = []

    def exists(file: Path) -> bool:
        return (file if file.is_absolute() else base / file).is_file()

    def check(prompt: ConfigPrompt | None, where: str) -> None:
        if prompt is not None and prompt.file is not None and not exists(prompt.file):
            missing.append(f"{source}: {where}.file: no such WAV file: {base / prompt.file}")

    check(settings.music_on_hold, "music_on_hold")
    for name, queue in settings.queues.items():
        check(queue.music_on_hold, f"queues.{name}.music_on_hold")
    for name, flow in settings.ivr.items():
        for where, voice in flow_text_voices(flow):
            if voices is not None and voice.lower() not in voices:
                missing.append(
                    f"{source}: {render_path(('ivr', name, *where))}: espeak-ng has no "
                    f"voice {voice!r} (see espeak-ng --voices)"
                )
        for where, file in flow_file_prompts(flow):
            if not exists(file):
                missing.append(
                    f"{source}: {render_path(('ivr', name, *where))}: "
                    f"no such WAV file: {base / file}"
                )
    if missing:
        raise ConfigError(missing)
    return settings
