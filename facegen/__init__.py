"""facegen: VAE-GANs (Larsen et al. 2015) for faces, driven by Hydra configs."""
__version__ = "0.1.0"


def load_model(path, device="cpu", model_cfg=None, use_ema=True):
    """A trained model (any facegen checkpoint or the seed's VAE_epoch_100.pth) in eval mode."""
    from facegen.checkpoint import load_model as _load_model

    return _load_model(path, device=device, model_cfg=model_cfg, use_ema=use_ema)


__all__ = ["__version__", "load_model"]
