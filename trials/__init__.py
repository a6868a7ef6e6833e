"""One trial of a LoRA sweep: data, model, training loop and scoring.

Wings, bottom to top (a wing imports only the wings below it):

- ``trials.config``, ``trials.validation``, ``trials.errors``: a trial's settings as typed
  objects (pure data) and the errors a trial raises, all under ``TrialError``;
  ``trials.toyworld`` (its ``__init__``): the paths of the committed toy world;
- :mod:`trials.data`: the image folder, buckets, captions, the held-out split, drawn cars;
- :mod:`trials.models`: the frozen SD components and the LoRA on the UNet;
- :mod:`trials.eval`: drawing the held-out prompts' images and scoring them (CLIP, DINO);
- :mod:`trials.train`: the training loop, the baseline, rescoring, the shared latent cache;
- on top: :mod:`trials.api`, the door (below); :mod:`trials.preflight`, a trial's inputs
  checked as a trial reads them; the commands ``python -m trials.train``,
  ``python -m trials.export_kohya``, ``python -m trials.toyworld`` (its builders import the
  wings above).

The orchestrator (``hpo``) imports :mod:`trials.api` and no other module of this package: it
calls :func:`trials.api.run_trial` with a ``report(step, rung, checkpoint_dir)`` callback
(``rung``: a :class:`trials.report.RungReport`) and gets a bool back (stop or go on), and
checks the data, model and scorer before a sweep with the door's pre-flight functions. This
package never imports ``hpo`` or ``ray``.
``tests/test_architecture.py`` checks these rules.
"""
