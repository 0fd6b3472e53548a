"""The learning side of crowdwatch: density network, synthetic source domain,
datasets, training, self-supervised adaptation, evaluation, export, registry.

It imports nothing from ``streamer``.
"""
