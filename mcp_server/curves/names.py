"""The one vocabulary of metric names and values: every reader, rule, plot and check uses it.

- Values: a number is an int or a float (never a boolean) or one of the non-finite spellings
  trainers write ("nan", "inf", "-inf", "+inf", and "NaN", "Infinity", "-Infinity" as
  JavaScript and Python's json print them), read by `number`.
- Names: `tokens` splits a name into lower-case words at "/", "_", ".", "-", ":" and spaces, so
  "val/acc", "val_acc", "Val Acc" and "val-acc" are one name (`key`, `find`); `split_role` tells a
  train series from a validation one; `direction_of` whether lower or higher is better.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Literal

Direction = Literal["min", "max"]

NONFINITE: dict[str, float] = {
    "nan": math.nan,
    "NaN": math.nan,
    "inf": math.inf,
    "+inf": math.inf,
    "Infinity": math.inf,
    "-inf": -math.inf,
    "-Infinity": -math.inf,
}

HIGHER_IS_BETTER = ("acc", "psnr", "reward", "return", "f1", "iou", "auc", "score", "ssim", "food")
LOWER_IS_BETTER = ("loss", "err", "perplexity", "ppl", "mse", "mae", "nll", "poison")
TRAIN_WORDS = ("train", "training", "tr")
VAL_WORDS = ("val", "valid", "validation", "eval", "evaluation", "dev", "test")  # preferred first
LR_NAMES = ("lr", "learning_rate", "learningrate")
RL_WORDS = ("reward", "return", "food", "episode")
_SEPARATORS = re.compile(r"[/_\s.\-:]+")


def number(value: Any) -> float | None:
    """A JSON value as a float: numbers (not booleans) and the non-finite spellings; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str):
        return NONFINITE.get(value)
    return None


def tokens(name: str) -> list[str]:
    """Lower-case words of a metric name: 'Train Loss', 'train/loss', 'train_loss' -> ['train', 'loss']."""
    return [t for t in _SEPARATORS.split(name.lower()) if t]


def key(name: str) -> str:
    """The name as one spelling: 'val/acc', 'val_acc', 'Val Acc', 'valAcc' -> 'valacc'."""
    return "".join(tokens(name))


def find(names: Iterable[str], wanted: str) -> str | None:
    """`wanted` itself among `names`, else the name spelled the same but for case and separators."""
    names = list(names)
    if wanted in names:
        return wanted
    want = key(wanted)
    return next((n for n in names if key(n) == want), None)


def base(name: str) -> str:
    """The name without its role word: 'train/loss', 'val_loss', 'Eval Loss' -> 'loss'."""
    return split_role(name)[1]


def direction_of(name: str) -> Direction | None:
    """Whether lower or higher is better for a metric, guessed from its name (last path part)."""
    last = name.rsplit("/", 1)[-1].lower()
    if any(k in last for k in HIGHER_IS_BETTER):
        return "max"
    if any(k in last for k in LOWER_IS_BETTER):
        return "min"
    return None


def split_role(name: str) -> tuple[str, str]:
    """(role, key): role "train", "val:<word>" or "" (none named), key the name without its role word."""
    role = ""
    rest = []
    for w in tokens(name):
        if not role and w in TRAIN_WORDS:
            role = "train"
        elif not role and w in VAL_WORDS:
            role = "val:" + w
        else:
            rest.append(w)
    return role, "_".join(rest)


def pair_series(names: Iterable[str]) -> list[tuple[str, str]]:
    """(train, val) pairs: train/loss-val/loss, train_loss-val_loss, Train Loss-Val Loss, loss-eval_loss.

    A series without a role word is the training one when no explicit train series has its key
    (Hugging Face logs "loss" beside "eval_loss"). Among several validation names the first of
    VAL_WORDS wins ("val" before "test").
    """
    train: dict[str, str] = {}
    implicit: dict[str, str] = {}
    val: dict[str, tuple[int, str]] = {}
    for name in names:
        role, k = split_role(name)
        if not k:
            continue
        if role == "train":
            train.setdefault(k, name)
        elif role.startswith("val:"):
            rank = VAL_WORDS.index(role[4:])
            if k not in val or rank < val[k][0]:
                val[k] = (rank, name)
        else:
            implicit.setdefault(k, name)
    pairs = []
    for k, (_, vname) in val.items():
        tname = train.get(k) or implicit.get(k)
        if tname:
            pairs.append((tname, vname))
    return pairs


def is_loss(name: str) -> bool:
    return "loss" in tokens(name) or "loss" in name.lower()


def is_acc(name: str) -> bool:
    words = tokens(name)
    return "acc" in (words or [""])[-1] or any(t.startswith("acc") for t in words)


def is_lr(name: str) -> bool:
    """'lr', 'train/lr', 'lr-Adam', 'learning_rate', 'Learning Rate'."""
    words = tokens(name)
    return bool({"_".join(words[i : i + 2]) for i in range(len(words))} & set(LR_NAMES))


def is_rl(name: str) -> bool:
    return any(w in name.lower() for w in RL_WORDS)
