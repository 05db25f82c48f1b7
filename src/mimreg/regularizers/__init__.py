"""Regularizers: pure loss functions on tensors, and thin modules that add them to a method."""

from mimreg.regularizers.base import REGULARIZERS, Regularizer, register
from mimreg.regularizers.club import club_nll, club_sample_bound
from mimreg.regularizers.infonce_masks import mask_infonce_loss
from mimreg.regularizers.magma import magma_loss, rbf_affinity
from mimreg.regularizers.mst import mst_edges, mst_length, sphere_loss, t_reg_loss, tregs_loss
from mimreg.regularizers.sigreg import sigreg_directions, sigreg_loss
from mimreg.regularizers.uniformity import uniformity_loss

__all__ = ["REGULARIZERS", "Regularizer", "club_nll", "club_sample_bound", "magma_loss", "mask_infonce_loss",
           "mst_edges", "mst_length", "rbf_affinity", "register", "sigreg_directions", "sigreg_loss", "sphere_loss", "t_reg_loss", "tregs_loss",
           "uniformity_loss"]
