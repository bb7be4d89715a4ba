"""The pieces of the training loop in ``mofme.train`` (read that first).

* ``config``: the typed training config (``TrainRunConfig``) and the model section's preset
  resolution; ``load_config``.
* ``sampling``: data order and per-item randomness (``DataStream``, ``EpochBatchSampler``).
* ``data``: the training set and validation items a config names.
* ``video``: the reference frame a 6-channel model is trained with.
* ``ema``: the moving average of the weights.
* ``precision``: ``train.amp: auto`` resolved from the machine's measured probe.
* ``state``: ``state_last.pt`` (resume) and the RNG states.
* ``rundir``: the locked run folder and its files.
* ``logs``: log.jsonl, val.jsonl and TensorBoard.
* ``validation``: PSNR / SSIM during training.
"""
