"""Losses: the triplet loss (consumes mined indices) and two large-margin softmax heads."""

from models.training.losses.arcface import ArcFaceLoss
from models.training.losses.cosface import CosFaceLoss
from models.training.losses.triplet import TripletMarginLoss

__all__ = ["ArcFaceLoss", "CosFaceLoss", "TripletMarginLoss"]
