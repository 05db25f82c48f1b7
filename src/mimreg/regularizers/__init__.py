"""Regularizers: pure loss functions on tensors, and thin modules that add them to a method."""

from mimreg.regularizers.base import REGULARIZERS, Regularizer, register
from mimreg.regularizers.magma import magma_loss, rbf_affinity
from mimreg.regularizers.uniformity import uniformity_loss

__all__ = ["REGULARIZERS", "Regularizer", "magma_loss", "rbf_affinity", "register", "uniformity_loss"]
