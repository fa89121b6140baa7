"""lorabook — the package behind the executable book on the theory of low-rank adaptation.

Modules: ``config`` (scale, device, seeds), ``checks`` (claims), ``linalg``, ``lora`` (adapters),
``train`` (batched Adam, cached sweeps), ``data`` (offline data and MiniLM), ``plotting``; and one module
per paper: ``expressivity`` (Zeng & Lee 2024), ``ntk`` (Jang, Lee & Ryu 2024), ``bounds`` (Kratsios et al. 2025).
"""
from .checks import claim
from .config import Scale, describe, device, get_scale, seed_everything
from .linalg import chain_product, low_rank_approx, numerical_rank
from .lora import LoRALinear

__all__ = [
    "Scale", "get_scale", "device", "seed_everything", "describe", "claim",
    "low_rank_approx", "numerical_rank", "chain_product", "LoRALinear",
]
__version__ = "0.1.0"
