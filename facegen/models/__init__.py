"""The networks: encoders, decoders, discriminators, and the VAE-GAN that holds them."""
from facegen.models.vaegan import VAEGAN, build_model, standing_statistics

__all__ = ["VAEGAN", "build_model", "standing_statistics"]
