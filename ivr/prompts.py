"""Prompt keys: the names the flow engine plays by, and the catalog the core renders.

The engine never sees audio. It names each prompt by a key such as
`ivr.main.v3.sales_menu.prompt.0.zh` (flow, version, node, slot inside the node,
language) and the core maps keys to WAV files it rendered beforehand from
`catalog()`. The version is part of the key, so a call that started before
`kefu config reload` keeps hearing the prompts of the flow it started with.
Single digits (read-backs, queue positions) are `ivr.<flow>.v<version>.digits.<lang>.<d>`.
"""

from __future__ import annotations

from ivr.schema import ANY_LANGUAGE, Flow, Localized, Prompt

DIGITS = "0123456789*#"
_SYMBOL_WORDS = {"en": {"*": "star", "#": "pound"}, "zh": {"*": "星号", "#": "井号"}}


def prompt_key(
    flow: str, version: int, node: str, slot: tuple[str | int, ...], language: str
) -> str:
    return ".".join(["ivr", flow, f"v{version}", node, *map(str, slot), language])


def digit_key(flow: str, version: int, language: str, digit: str) -> str:
    return f"ivr.{flow}.v{version}.digits.{language}.{digit}"


def pick(prompt: Localized, language: str) -> Prompt | None:
    """The prompt for `language`, else the one for every language, else None."""
    return prompt.get(language) or prompt.get(ANY_LANGUAGE)


def digit_prompt(flow: Flow, language: str, digit: str) -> Prompt:
    own = flow.digits.get(language, {}).get(digit)
    if own is not None:
        return own
    text = _SYMBOL_WORDS.get(language.split("-")[0], {}).get(digit, digit)
    return Prompt(text=text)


def catalog(name: str, flow: Flow, version: int) -> dict[str, Prompt]:
    """Every prompt key of one flow version -> the prompt to render (voice filled in).

    A slot with no prompt for a language is left out; `ivr.validate` reports it.
    """
    out: dict[str, Prompt] = {}

    def add(key: str, prompt: Prompt, language: str) -> None:
        if prompt.text is not None and prompt.voice is None:
            prompt = prompt.model_copy(update={"voice": flow.voice(language)})
        out[key] = prompt

    for node_name, node in flow.nodes.items():
        for slot, localized in node.prompt_slots():
            for language in flow.languages:
                chosen = pick(localized, language)
                if chosen is not None:
                    add(prompt_key(name, version, node_name, slot, language), chosen, language)
    for language in flow.languages:
        for digit in DIGITS:
            add(
                digit_key(name, version, language, digit),
                digit_prompt(flow, language, digit),
                language,
            )
    return out
