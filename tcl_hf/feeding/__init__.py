"""Feeding: what each training step sees — batches cut on the device or drawn by loader workers (``batches``,
``loaders``), the class-balanced samplers (``sampler``), the un-augmented passes for the EM step (``features``)
and ``feed``, which picks among them once per run."""
