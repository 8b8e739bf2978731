"""Experiments on human judgements: 2AFC / JND evaluation, dedup-threshold calibration, LoRA training, and the
every-metric comparison of one pair.

Import order between rooms: common -> data -> metric -> {judge, indexer} -> app. ``lookalike.judge`` may import
common, data and metric; only the app imports it.
"""
