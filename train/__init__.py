"""Stage two: train any timm student from cached top-k soft labels, replaying the stored views.

``relabel.train.loop.train(TrainConfig(...))`` is the entry point; ``relabel.train.loop.build`` gives the pieces
(data, student, optimizer, loss) one step at a time for benchmarks. Modules: ``data`` (which view
each epoch replays, repeated augmentation, pair-keeping batches, decode + render + mix in workers),
``losses`` (sparse KD from top-k + rest, KD from the full softmax, mixed ground-truth CE), ``evaluate``
(timm-style eval, top-1/top-5, class maps),
``report`` (metrics.jsonl, curves.png), ``loop`` (the trainer), ``command`` (``relabel train``).
"""
