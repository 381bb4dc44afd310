"""The network: EfficientViT-Seg modules, the registry of official variants, class tables and checkpoints."""
