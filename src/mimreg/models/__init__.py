"""Models: the encoders (timm's ViT and ResNet), MAE's decoder, masking and patch helpers."""

from mimreg.models.decoder import MAEDecoder
from mimreg.models.masking import Mask, mask_noise, orthogonal_masks, random_mask, take_tokens
from mimreg.models.patches import patchify, unpatchify
from mimreg.models.resnet import RESNET_ARCHS, STEMS, ResNetEncoder, use_cifar_stem
from mimreg.models.vit import VIT_ARCHS, EncoderOutput, ViTEncoder

# every model.arch -> its encoder class: ViTs for every method, ResNets for the joint-embedding ones
ARCHS: dict[str, type] = {**{name: ViTEncoder for name in VIT_ARCHS}, **{name: ResNetEncoder for name in RESNET_ARCHS}}
Encoder = ViTEncoder | ResNetEncoder


def is_vit(arch: str) -> bool:
    return ARCHS.get(arch) is ViTEncoder


__all__ = ["ARCHS", "Encoder", "EncoderOutput", "MAEDecoder", "Mask", "RESNET_ARCHS", "ResNetEncoder", "STEMS",
           "VIT_ARCHS", "ViTEncoder", "is_vit", "mask_noise", "orthogonal_masks", "patchify", "random_mask",
           "take_tokens", "unpatchify", "use_cifar_stem"]
