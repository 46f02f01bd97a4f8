"""Generic local multiple-choice files, scored as an lm-eval ``multiple_choice`` task with the same settings would be.

A row has ``query`` (or ``context``), ``choices`` (a list of strings) and ``gold`` (an index). The context is the query
itself, or a Jinja template rendered with the row (lm-eval's ``doc_to_text`` syntax, e.g. ``"Question: {{query}}
\\nAnswer:"``); each continuation is ``target_delimiter + choice``. Rows with ``context_options`` (a list),
``continuation`` and ``gold`` (the MosaicML schema of WinoGrande-style tasks) are scored by partial scoring: one context
per option, the continuation shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elmtune.evaluation.data import DataError
from elmtune.evaluation.items import Question


@dataclass(frozen=True)
class MCFormat:
    """How a generic multiple-choice file is turned into requests.

    Attributes:
        template: Jinja template of the context, rendered with the row's fields; None uses ``query`` or ``context``.
        target_delimiter: Text between context and each choice (lm-eval's default: one space).
    """

    template: str | None = None
    target_delimiter: str = " "

    def __post_init__(self) -> None:
        if self.template is not None:
            from jinja2 import TemplateSyntaxError

            try:
                _environment().from_string(self.template)
            except TemplateSyntaxError as error:
                raise DataError(f"prompt template does not parse: {error}") from None


def _environment() -> Any:
    from jinja2 import BaseLoader, Environment, StrictUndefined

    return Environment(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)


def _context(row: dict[str, Any], fmt: MCFormat, where: str) -> str:
    if fmt.template is not None:
        from jinja2 import UndefinedError

        try:
            return _environment().from_string(fmt.template).render(**row)
        except UndefinedError as error:
            raise DataError(f"{where}: the prompt template uses a missing field ({error.message})") from None
    for key in ("query", "context"):
        if key in row:
            return str(row[key])
    raise DataError(f"{where}: needs 'query' or 'context' (or pass a prompt template)")


def mc_question(row: dict[str, Any], index: int, task: str, fmt: MCFormat) -> Question:
    """One generic multiple-choice row as a question.

    Raises:
        DataError: Missing fields, an empty choice list, or a gold index out of range.
    """
    where = f"{task} row {index + 1}"  # 1-based, as in every message
    if "gold" not in row:
        raise DataError(f"{where}: needs 'gold' (the index of the correct choice)")
    gold = int(row["gold"])
    if "context_options" in row:
        contexts = [str(c) for c in row["context_options"]]
        if "continuation" not in row or not contexts:
            raise DataError(f"{where}: 'context_options' needs a non-empty list and a 'continuation'")
        continuation = fmt.target_delimiter + str(row["continuation"])
        requests = tuple((context, continuation) for context in contexts)
        labels = tuple(contexts)
    else:
        choices = row.get("choices")
        if not isinstance(choices, list) or not choices:
            raise DataError(f"{where}: needs 'choices', a non-empty list of strings")
        context = _context(row, fmt, where)
        requests = tuple((context, fmt.target_delimiter + str(choice)) for choice in choices)
        labels = tuple(str(choice) for choice in choices)
    if not 0 <= gold < len(requests):
        raise DataError(f"{where}: gold {gold} is not an index of its {len(requests)} choices")
    return Question(
        task=task,
        index=index,
        requests=requests,
        gold=gold,
        labels=labels,
        norm_lengths=tuple(len(label) for label in labels),
    )
