"""Losses as pure functions of embeddings; each one is DDP-correct (see ``distributed``)."""

from selfsup.losses.barlow_twins import barlow_twins_loss
from selfsup.losses.bigan import bigan_discriminator_loss, bigan_generator_encoder_loss
from selfsup.losses.cpc import cpc_infonce, cpc_infonce_with_accuracy
from selfsup.losses.dcl import dcl_loss, vmf_weights
from selfsup.losses.dino import dino_loss, update_center
from selfsup.losses.fixmatch import fixmatch_loss
from selfsup.losses.infonce import infonce_queue_loss
from selfsup.losses.mae import mae_loss
from selfsup.losses.mocov3 import mocov3_contrastive_loss
from selfsup.losses.negative_cosine import byol_loss, negative_cosine
from selfsup.losses.nnclr import nearest_neighbours, nnclr_loss
from selfsup.losses.nt_xent import nt_xent_loss
from selfsup.losses.reconstruction import reconstruction_cross_entropy, reconstruction_mse
from selfsup.losses.supcon import supcon_loss
from selfsup.losses.swav import prototype_scores, sinkhorn_knopp, swav_loss
from selfsup.losses.vicreg import vicreg_loss, vicreg_terms

__all__ = [
    "barlow_twins_loss",
    "bigan_discriminator_loss",
    "bigan_generator_encoder_loss",
    "byol_loss",
    "cpc_infonce",
    "cpc_infonce_with_accuracy",
    "dcl_loss",
    "dino_loss",
    "fixmatch_loss",
    "infonce_queue_loss",
    "mae_loss",
    "mocov3_contrastive_loss",
    "nearest_neighbours",
    "negative_cosine",
    "nnclr_loss",
    "nt_xent_loss",
    "prototype_scores",
    "reconstruction_cross_entropy",
    "reconstruction_mse",
    "sinkhorn_knopp",
    "supcon_loss",
    "swav_loss",
    "update_center",
    "vicreg_loss",
    "vicreg_terms",
    "vmf_weights",
]
