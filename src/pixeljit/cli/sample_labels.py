"""`pixeljit sample --labels`: class numbers and class names as one list of class numbers. A
plain number is a class number; `name:N` / `number:N` say which is meant where a class is named
like a number (folders 1…10 are sorted '1', '10', '2', …)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pixeljit.checkpoints.load import TrainedModel

NAME_MARK, NUMBER_MARK = "name:", "number:"  # --labels name:1 / number:1: which one is meant


def label_number(token: str) -> int | None:
    """The class number a --labels token gives: number:N, or a plain integer (refused later if
    it is also another class's name: `resolve_labels`); None for a name."""
    if token.startswith(NAME_MARK):
        return None
    text = token.removeprefix(NUMBER_MARK)
    try:
        return int(text)
    except ValueError:
        if not token.startswith(NUMBER_MARK):
            return None
        raise ValueError(f"--labels {token}: {text!r} is not a class number: write "
                         f"{NUMBER_MARK}N with N a whole number ≥ 0") from None  # fmt: skip


def resolve_labels(labels: list[str] | None, model: TrainedModel) -> list[int] | None:
    """--labels as class numbers: numbers as given, names through `model.label_index` (exact,
    else in any case). A plain number that is also the name of another class (folders named
    1…10 are sorted '1', '10', '2', …) is refused as ambiguous: number:N / name:N pick one."""
    if labels is None:
        return None
    chosen = []
    for token in labels:
        number = label_number(token)
        if number is None:
            try:
                chosen.append(model.label_index(token.removeprefix(NAME_MARK)))
            except ValueError as err:
                raise ValueError(f"--labels {err}") from None
            continue
        named = _named_class(token, model) if not token.startswith(NUMBER_MARK) else None
        if named not in (None, number):
            if number >= model.net.config.num_classes:  # a plain number is a class number
                raise ValueError(
                    f"--labels {token}: class number {number} is "
                    f"{_class_text(number, model)}; {token!r} is the name of class number "
                    f"{named}: write {NAME_MARK}{token} for the class named {token!r}"
                )
            raise ValueError(
                f"--labels {token} is ambiguous: {token!r} is the name of class number {named}, "
                f"and class number {number} is {_class_text(number, model)}: write "
                f"{NAME_MARK}{token} for the class named {token!r}, or {NUMBER_MARK}{number} "
                f"for class number {number}"
            )
        chosen.append(number)
    return chosen


def _class_text(number: int, model: TrainedModel) -> str:
    """Class `number` in words: "named '10'", "unnamed", or outside the model's range."""
    names, classes = model.class_names, model.net.config.num_classes
    if number < len(names):
        return f"named {names[number]!r}"
    return "unnamed" if number < classes else f"outside [0, {classes}) for this model"


def _named_class(token: str, model: TrainedModel) -> int | None:
    """The class whose name `token` is (as `label_index` matches names), None for none."""
    if not model.class_names:
        return None
    try:
        return model.label_index(token)
    except ValueError:
        return None
