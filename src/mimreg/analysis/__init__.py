"""Pictures and numbers of what an encoder learned: reconstructions, attention, patch PCA,
2-D maps of its features, training curves, singular-value spectra; one report page per study."""

from mimreg.analysis.attention import cls_attention, last_block_attention, plot_attention
from mimreg.analysis.curves import plot_curves, plot_run_curves
from mimreg.analysis.embedding import davies_bouldin, embed_2d, plot_embedding, plot_embedding_panels
from mimreg.analysis.patch_pca import patch_pca_images, pca_rgb, plot_patch_pca
from mimreg.analysis.reconstruction import plot_reconstructions, reconstruct
from mimreg.analysis.spectrum import effective_rank, plot_spectrum, singular_values

__all__ = ["cls_attention", "davies_bouldin", "effective_rank", "embed_2d", "last_block_attention", "patch_pca_images",
           "pca_rgb", "plot_attention", "plot_curves", "plot_embedding", "plot_embedding_panels", "plot_patch_pca",
           "plot_reconstructions", "plot_run_curves", "plot_spectrum", "reconstruct", "singular_values"]
