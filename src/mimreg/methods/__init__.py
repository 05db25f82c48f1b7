"""Methods: each turns a batch into named loss terms and named features."""

from mimreg.methods.base import METHODS, Method, MethodOutput, Prediction, register
from mimreg.methods.barlow import BarlowTwins, barlow_loss
from mimreg.methods.byol import BYOL, byol_loss
from mimreg.methods.lejepa import LeJEPA, lejepa_prediction_loss
from mimreg.methods.mae import MAE, reconstruction_loss
from mimreg.methods.mse import MSE, invariance_loss
from mimreg.methods.msn import MSN, msn_loss
from mimreg.methods.simclr import SimCLR, nt_xent_loss
from mimreg.methods.simmim import SimMIM, masked_l1_loss
from mimreg.methods.vicreg import VICReg, vicreg_terms

__all__ = ["BYOL", "BarlowTwins", "LeJEPA", "MAE", "METHODS", "MSE", "MSN", "Method", "MethodOutput", "Prediction", "SimCLR", "SimMIM", "VICReg",
           "barlow_loss", "byol_loss", "invariance_loss", "lejepa_prediction_loss", "masked_l1_loss", "msn_loss", "nt_xent_loss", "reconstruction_loss", "register", "vicreg_terms"]
