"""Losses as pure functions of embeddings; each one is DDP-correct (see ``distributed``)."""

from selfsup.losses.barlow_twins import barlow_twins_loss
from selfsup.losses.dino import dino_loss, update_center
from selfsup.losses.infonce import infonce_queue_loss
from selfsup.losses.negative_cosine import byol_loss, negative_cosine
from selfsup.losses.nt_xent import nt_xent_loss

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "dino_loss",
    "infonce_queue_loss",
    "negative_cosine",
    "nt_xent_loss",
    "update_center",
]
