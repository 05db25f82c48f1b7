"""Models: the ViT encoder (timm), MAE's decoder, masking and patch helpers."""

from mimreg.models.decoder import MAEDecoder
from mimreg.models.masking import Mask, mask_noise, orthogonal_masks, random_mask, take_tokens
from mimreg.models.patches import patchify, unpatchify
from mimreg.models.vit import ARCHS, EncoderOutput, ViTEncoder

__all__ = ["ARCHS", "EncoderOutput", "MAEDecoder", "Mask", "ViTEncoder", "mask_noise", "orthogonal_masks", "patchify",
           "random_mask", "take_tokens", "unpatchify"]
