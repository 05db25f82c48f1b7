"""Methods: each turns a batch into named loss terms and named features."""

from mimreg.methods.base import METHODS, Method, MethodOutput, register
from mimreg.methods.mae import MAE, reconstruction_loss

__all__ = ["MAE", "METHODS", "Method", "MethodOutput", "reconstruction_loss", "register"]
