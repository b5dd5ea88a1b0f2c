"""Training and fine-tuning of face embedders: metric-learning losses, miners, the trainer.

Laid out like pytorch-metric-learning: distances, losses, miners and reducers are separate
small modules. A miner only chooses ``(anchor, positive, negative)`` indices, a loss turns
them into per-triplet values through a distance object, and a reducer turns those into one
number (and the fraction of active triplets). Nothing heavy is imported here.
"""
