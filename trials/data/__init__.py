"""The training and held-out data: the image folder, buckets, captions, drawn cars, the split.

Reads and checks what a trial trains on: :mod:`~trials.data.folder` (``metadata.jsonl`` or
``.csv`` plus images), :mod:`~trials.data.buckets` (aspect-ratio buckets),
:mod:`~trials.data.captions` (caption dropout), :mod:`~trials.data.holdout` (the held-out
images) and :mod:`~trials.data.synthetic` (the drawn cars of the offline demo). Imports only
``trials.config`` and ``trials.validation``.
"""
