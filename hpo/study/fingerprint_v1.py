"""The study fingerprint as recorded before it was derived from the sweep file's definition
(format 1, up to main 45feb79): a hand-kept list of keys, kept only to read studies recorded
then. Never extend it: :func:`hpo.study.fingerprint.compute` is the fingerprint.

A study recorded with format 1 resumes when this function gives what it recorded; the current
fingerprint is then recorded in its place (``hpo.study.fingerprint.check_or_record``). Keys
format 1 missed (``data.image_interpolation_mode``, ``eval.width``, ``eval.rungs``...) cannot be
checked for such a study: their values at the time were never recorded.
"""

from __future__ import annotations

from dataclasses import asdict

from hpo.study.contents import digest, local_clip, local_contents, local_model, show
from hpo.sweep.spec import Sweep

VERSION = 1


def compute_v1(sweep: Sweep, data_contents: str) -> dict[str, str]:
    """The fingerprint: key path -> the value as JSON, or a content hash.

    ``data_contents`` is ``trials.data.folder.folder_fingerprint`` of the training set (every
    image's bytes and every caption), computed by the pre-flight check that reads the folder.
    """
    d, e = sweep.data, sweep.eval
    fp: dict[str, str] = {"format": str(VERSION)}
    fp["model.name"] = show(sweep.model.name)
    fp["model.revision"] = show(sweep.model.revision)
    fp["model.variant"] = show(sweep.model.variant)
    model_dir = local_model(sweep)
    if model_dir is not None:
        fp["model.contents"] = local_contents(model_dir)
    fp["data.contents"] = "sha256:" + data_contents[:16]
    for key in ("image_column", "caption_column", "resolution", "center_crop", "random_flip"):
        fp[f"data.{key}"] = show(getattr(d, key))
    for key, value in asdict(sweep.train).items():
        fp[f"train.{key}"] = show(value)
    fp["eval.prompts"] = digest(list(e.prompt_list))  # the prompts themselves, not the path
    for key in ("images_per_prompt", "inference_steps", "guidance_scale", "seed", "clip_model",
                "clip_pretrained", "every_steps"):
        fp[f"eval.{key}"] = show(getattr(e, key))
    clip = local_clip(sweep)
    if clip is not None:
        fp["eval.clip_contents"] = local_contents(clip)
    fp["metric.name"] = show(sweep.metric)
    fp["metric.goal"] = show(sweep.goal)
    # Held-out images and further objectives, only when used (older fingerprints stay equal).
    if d.holdout:
        fp["data.holdout"] = show([d.holdout, d.holdout_seed])
    if e.reference_dir is not None or d.holdout:
        fp["eval.dino_model"] = show(e.dino_model)
    if e.reference_dir is not None:
        fp["eval.reference_dir"] = show(str(e.reference_dir))
    pres = sweep.preservation
    if pres.measured:  # only when used, so older fingerprints stay equal
        fp["preservation.trigger"] = show(pres.trigger)
        fp["preservation.control_prompts"] = digest(list(pres.control_prompt_list))
        fp["preservation.require"] = show(None if sweep.require is None
                                           else sweep.require.as_dict())
    if pres.measured or pres.method != "none":
        for key in ("method", "weight", "class_images", "class_inference_steps"):
            fp[f"preservation.{key}"] = show(getattr(pres, key))
    if sweep.multi_objective:
        fp["metric.objectives"] = show([[o.name, o.goal] for o in sweep.objectives])
    for p in sorted(sweep.parameters, key=lambda p: p.name):
        fp[f"parameters.{p.name}"] = show(
            {"kind": p.kind, "value": p.value, "values": list(p.values), "min": p.low,
             "max": p.high, "q": p.q})
    return fp
