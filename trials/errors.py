"""The errors a trial raises, under one base class: :class:`TrialError`.

The orchestrator catches ``TrialError`` where it means "anything a trial found wrong" and asks
:attr:`TrialError.every_trial` whether the same error would fail every trial of a sweep alike
(bad data, model or config: stop the sweep) or only this trial's parameters (a learning rate
that diverges: try others). The classes live here, torch-free, so that the orchestrator can
catch them without importing the training code; the modules that raise them import them from
here (``trials.data.folder.DataError`` and the like keep working).

:class:`~trials.validation.ConfigError` is a ``TrialError`` too; it lives with the YAML reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class TrialError(Exception):
    """Anything a trial (or a check run as a trial would) found wrong.

    ``every_trial``: whether every trial of a sweep would fail alike. ``key``: the settings key
    at fault (``data.train_dir``), where the check that raised it knows one; None otherwise.
    """

    every_trial: ClassVar[bool] = False
    key: str | None = None


class DataError(TrialError, ValueError):
    """Everything wrong with a training folder; ``str()`` is the full multi-line report.

    ``problems`` holds ``(where, what)`` pairs: ``where`` is a file name as written in the
    metadata, a metadata location such as ``metadata.jsonl line 3``, or the folder itself.
    """

    every_trial = True

    def __init__(self, train_dir: str | Path, problems: list[tuple[str, str]],
                 label: str = "the training data") -> None:
        self.train_dir = str(train_dir)
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        self.label = label  # what the folder holds, e.g. "the held-out reference images"
        lines = [f"{self.train_dir}: {len(self.problems)} problem(s) in {label}:"]
        lines += [f"  - {where}: {what}" for where, what in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        # Trials run in worker processes; the default exception pickling would call __init__
        # with the message only and fail, losing the report on its way to the driver.
        return (type(self), (self.train_dir, list(self.problems), self.label))


class ModelError(TrialError, ValueError):
    """A model source that cannot be loaded (missing folder or subfolder)."""

    every_trial = True


class SetupError(TrialError, ValueError):
    """Settings the data cannot satisfy: a held-out split that leaves nothing to train on, a
    training caption without the preservation trigger. ``key`` names the setting."""

    every_trial = True

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.key))


class TrialDiverged(TrialError, RuntimeError):
    """The loss became NaN or infinite: the learning rate is too high for this setting."""

    def __init__(self, step: int, loss: float) -> None:
        self.step = step
        self.loss = loss
        super().__init__(f"loss is {loss} at step {step}: training diverged "
                         "(lower the learning rate, or clip harder with a smaller max_grad_norm)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.loss))


class TrialOutOfMemory(TrialError, RuntimeError):
    """The GPU ran out of memory; the message says which settings to lower."""

    def __init__(self, config: Any) -> None:
        # config: the trial's TrialConfig (not imported: trials.config imports this module)
        t, p = config.train, config.params
        super().__init__(
            f"out of GPU memory with rank {p.rank}, train_batch_size {t.train_batch_size}, "
            f"resolution {config.data.resolution}: lower train_batch_size (and raise "
            "gradient_accumulation_steps to keep the effective batch), lower the rank, use "
            "mixed_precision fp16/bf16, or set gradient_checkpointing: true")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its message: the config it was made from does not travel with it.
        return (_with_message, (type(self), str(self)))


def _with_message(cls: type[TrialError], message: str) -> TrialError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


class KohyaExportError(TrialError, ValueError):
    """A LoRA folder :mod:`trials.export_kohya` cannot convert; the message names the file."""
