"""Real images of the target domain that are never trained on: the held-out split.

``data.holdout: N`` sets aside N images of the training folder, chosen by a seeded hash of each
image's ``file_name`` (``data.holdout_seed``): the same folder and seed always give the same
split, on every machine, and adding images to the folder never moves an existing image from
one side to the other. ``eval.reference_dir`` names a separate folder in the same format whose
images are used as held-out references too. Generated images are compared with these
references by ``clip_i_holdout`` and ``dino_holdout`` (:mod:`trials.eval.subject_fidelity`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from trials.config import TrialConfig
from trials.data.folder import REFERENCE_LABEL, Example, load_examples


def _rank(seed: int, example: Example) -> bytes:
    name = str(PurePosixPath(example.file_name))
    return hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=16).digest()


def split(examples: list[Example], n_holdout: int, seed: int = 0
          ) -> tuple[list[Example], list[Example]]:
    """``(training, held_out)``: the ``n_holdout`` examples with the smallest seeded hashes
    are held out; both lists keep metadata order.

    Raises ``ValueError`` when fewer than one training image would remain.
    """
    if n_holdout <= 0:
        return list(examples), []
    if n_holdout >= len(examples):
        raise ValueError(f"data.holdout: {n_holdout} held-out image(s) leave no training "
                         f"image (the folder has {len(examples)}); hold out fewer")
    chosen = {id(ex) for ex in sorted(examples, key=lambda ex: _rank(seed, ex))[:n_holdout]}
    return ([ex for ex in examples if id(ex) not in chosen],
            [ex for ex in examples if id(ex) in chosen])


def training_examples(config: TrialConfig, examples: list[Example]) -> list[Example]:
    """The examples a trial trains on: the folder's minus the held-out split."""
    return split(examples, config.data.holdout, config.data.holdout_seed)[0]


def reference_examples(config: TrialConfig) -> list[Example]:
    """The held-out real images: the split of the training folder, then ``reference_dir``'s."""
    refs: list[Example] = []
    if config.data.holdout:
        everything = load_examples(config.data.train_dir, config.data.caption_column)
        refs += split(everything, config.data.holdout, config.data.holdout_seed)[1]
    if config.eval.reference_dir is not None:
        refs += load_examples(Path(config.eval.reference_dir), config.data.caption_column,
                              REFERENCE_LABEL)
    return refs
