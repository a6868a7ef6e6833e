"""The trigger: the brand phrase a LoRA should learn, and the texts without it.

Pure text, beside ``trials.config`` at the bottom of the package (the config checks the
held-out prompts against the trigger when it is read); imports nothing of the project.

A sweep names the phrase once (``preservation.trigger``, e.g. ``Hyundai``). Removing it from a
text gives the *control* version of that text: what the base model should keep drawing as it
did. Two uses:

- control prompts: the held-out prompts without the trigger, scored at every rung to see
  whether the LoRA changed the base model where it was not asked to
  (:mod:`trials.eval.preservation`);
- trigger-less captions: the training captions without the trigger, the class prompts of
  DreamBooth's prior preservation and the captions of differential output preservation
  (:mod:`trials.train.preserve`).

The phrase matches whole words, case-insensitively ("Hyundai" also in "hyundai's" is not
removed: the possessive is another word). An article before a removed phrase is fixed ("an
Hyundai" is never written, but "a Hyundai Ioniq" becomes "an Ioniq").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_VOWELS = "aeiouAEIOU"


def _pattern(trigger: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in trigger.split()]
    return re.compile(r"(?<![\w'])" + r"\s+".join(words) + r"(?![\w'])", re.IGNORECASE)


def has_trigger(text: str, trigger: str) -> bool:
    """Whether ``text`` holds ``trigger`` as whole words (case-insensitive)."""
    return _pattern(trigger).search(text) is not None


def trigger_end(text: str, trigger: str) -> int | None:
    """Where the first whole-word ``trigger`` in ``text`` ends (a character offset), or None."""
    found = _pattern(trigger).search(text)
    return None if found is None else found.end()


def remove_trigger(text: str, trigger: str) -> str:
    """``text`` without every whole-word occurrence of ``trigger``, spaces and articles fixed.

    ``remove_trigger("a blue Hyundai hatchback, side view", "Hyundai")`` is
    ``"a blue hatchback, side view"``; ``"a Hyundai Ioniq 5"`` gives ``"an Ioniq 5"``. Only
    the article right before a removed phrase is touched.
    """
    found = _pattern(trigger)
    with_article = re.compile(r"(?<![\w'])([Aa])n?\s+(?=" + found.pattern + ")", re.IGNORECASE)
    parts: list[str] = []
    pos = 0
    for match in found.finditer(text):
        before = text[pos:match.start()]
        art = with_article.search(before + text[match.start():match.end()])
        if art is not None and art.start() < len(before):
            rest = text[match.end():].lstrip()
            before = before[:art.start()] + art.group(1) + ("n" if rest[:1] in _VOWELS else "")
            before += " "
        parts.append(before)
        pos = match.end()
    parts.append(text[pos:])
    out = " ".join(p.strip(" ") if i else p.rstrip(" ") for i, p in enumerate(parts))
    out = re.sub(r"\s+([,.;:!?])", r"\1", out)
    out = re.sub(r"\s{2,}", " ", out).strip()
    return out.rstrip(",;: ").lstrip(",;: ")


def control_prompts(prompts: Sequence[str], trigger: str, file: str | Path
                    ) -> tuple[str, ...]:
    """The held-out prompts without the trigger, in the same order (so prompt ``i`` and
    control prompt ``i`` share their images' seeds).

    Raises ``ValueError`` naming ``file`` and the first prompt that lacks the trigger (its
    control prompt would be the prompt itself, and its "brand" score would measure nothing).
    """
    out = []
    for i, prompt in enumerate(prompts):
        if not has_trigger(prompt, trigger):
            raise ValueError(f"{file}: prompt {i + 1} ({prompt!r}) does not contain the trigger "
                             f"{trigger!r}; every held-out prompt must name it, or give "
                             "preservation.control_prompts")
        out.append(remove_trigger(prompt, trigger))
    return tuple(out)


def triggerless_captions(examples: Sequence[Any], trigger: str, train_dir: str | Path
                         ) -> list[str]:
    """Every training caption without the trigger, in the order of the examples'
    ``captions`` (:class:`trials.data.folder.Example`), flattened over examples as the latent
    cache stores caption embeddings.

    Raises ``ValueError`` naming the training folder's metadata record of the first caption
    that lacks the trigger: preservation needs to tell the brand caption from its control.
    """
    out = []
    for ex in examples:
        for caption in ex.captions:
            if not has_trigger(caption, trigger):
                where = ex.where or ex.file_name
                raise ValueError(f"{train_dir}: {where}: caption {caption!r} of {ex.file_name} "
                                 f"does not contain the trigger {trigger!r}; preservation "
                                 "training needs it in every caption")
            out.append(remove_trigger(caption, trigger))
    return out
