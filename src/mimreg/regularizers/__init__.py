"""Regularizers: pure loss functions on tensors, and thin modules that add them to a method."""

from mimreg.regularizers.base import REGULARIZERS, Regularizer, register
from mimreg.regularizers.club import club_nll, club_sample_bound
from mimreg.regularizers.coding_rate import coding_rate_loss
from mimreg.regularizers.infonce_masks import mask_infonce_loss
from mimreg.regularizers.koleo import koleo_loss
from mimreg.regularizers.magma import magma_loss, rbf_affinity
from mimreg.regularizers.mmcr import mmcr_loss
from mimreg.regularizers.mst import mst_edges, mst_length, sphere_loss, t_reg_loss, tregs_loss
from mimreg.regularizers.sigreg import unit_slices, sigreg_loss
from mimreg.regularizers.uniformity import uniformity_loss
from mimreg.regularizers.vcreg import vcreg_loss
from mimreg.regularizers.visreg import visreg_loss

__all__ = ["REGULARIZERS", "Regularizer", "club_nll", "club_sample_bound", "coding_rate_loss", "koleo_loss",
           "magma_loss", "mask_infonce_loss", "mmcr_loss", "mst_edges", "mst_length", "rbf_affinity", "register",
           "unit_slices", "sigreg_loss", "sphere_loss", "t_reg_loss", "tregs_loss", "uniformity_loss", "vcreg_loss",
           "visreg_loss"]
