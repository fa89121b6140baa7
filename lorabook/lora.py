"""LoRA layers: the object every chapter shares.

A frozen linear map ``y = W0 x + b`` gets a low-rank update ``ΔW = s · B A`` with
``B ∈ R^{d_out × r}``, ``A ∈ R^{r × d_in}`` and the scaling ``s = alpha / r`` (``s = 1`` when ``alpha`` is
``None``). Three parametrisations:

* ``train="both"`` — the usual LoRA (Hu et al.): A Gaussian, B zero, both trained;
* ``train="A"`` — the asymmetric adapter of Kratsios et al.: B frozen random Gaussian ``N(0, std²)``,
  A trained, starting at zero;
* ``train="B"`` — the asymmetric adapter of Zhu et al.: A frozen random Gaussian, B trained, starting at zero.

In every mode ``ΔW = 0`` at initialisation, so the adapted layer starts as the pretrained one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

MODES = ("both", "A", "B")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a rank-``r`` update ``ΔW = s · B A``.

    Parameters
    ----------
    base : the pretrained ``nn.Linear`` (weight ``(d_out, d_in)``); its parameters are frozen.
    rank : integer ``r`` in ``[1, min(d_in, d_out)]``.
    train : ``"both"``, ``"A"`` (B frozen random) or ``"B"`` (A frozen random).
    init_std : standard deviation of the Gaussian factor (A for ``"both"`` and ``"B"``, B for ``"A"``);
        default ``1/sqrt(d_in)`` for A and ``1/sqrt(r)`` for B.
    alpha : LoRA scaling numerator; ``s = alpha / r``. ``None`` means ``s = 1``.
    generator : optional ``torch.Generator`` (CPU) for the random factor, for reproducible draws.

    Shapes: input ``(..., d_in)`` → output ``(..., d_out)``.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        *,
        train: str = "both",
        init_std: float | None = None,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be an nn.Linear, got {type(base).__name__}")
        d_out, d_in = base.weight.shape
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise ValueError(f"rank must be an integer, got {type(rank).__name__}")
        if not 1 <= rank <= min(d_in, d_out):
            raise ValueError(f"rank={rank} is out of range: it must lie in [1, min(d_in, d_out)] = [1, {min(d_in, d_out)}]")
        if train not in MODES:
            raise ValueError(f"train={train!r} is not a mode; allowed: {', '.join(MODES)}")
        if init_std is not None and not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std > 0):
            raise ValueError(f"init_std must be a positive finite number, got {init_std!r}")
        if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")

        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank, self.train_mode = rank, train
        self.scaling = 1.0 if alpha is None else alpha / rank
        dtype, dev = base.weight.dtype, base.weight.device

        def gaussian(shape: tuple[int, int], std: float) -> torch.Tensor:
            return (torch.randn(shape, generator=generator, dtype=dtype) * std).to(dev)

        zeros_A = torch.zeros(rank, d_in, dtype=dtype, device=dev)
        zeros_B = torch.zeros(d_out, rank, dtype=dtype, device=dev)
        if train == "both":
            A, B = gaussian((rank, d_in), init_std or 1 / math.sqrt(d_in)), zeros_B
        elif train == "A":
            A, B = zeros_A, gaussian((d_out, rank), init_std or 1 / math.sqrt(rank))
        else:
            A, B = gaussian((rank, d_in), init_std or 1 / math.sqrt(d_in)), zeros_B
        self.A = nn.Parameter(A, requires_grad=train in ("both", "A"))
        self.B = nn.Parameter(B, requires_grad=train in ("both", "B"))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update ``ΔW = s · B A``, shape ``(d_out, d_in)``, rank ≤ r."""
        return self.scaling * (self.B @ self.A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has last dimension {x.shape[-1]}, expected d_in={self.in_features}")
        return self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight ``W0 + ΔW`` (and the base bias): the same function, no adapter."""
        merged = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None)
        merged = merged.to(dtype=self.base.weight.dtype, device=self.base.weight.device)
        merged.weight.copy_(self.base.weight + self.delta_weight())
        if self.base.bias is not None:
            merged.bias.copy_(self.base.bias)
        return merged

    def num_trainable(self) -> int:
        """Trainable parameters: ``r(d_in + d_out)`` for ``"both"``, ``r·d_in`` for ``"A"``, ``r·d_out`` for ``"B"``."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def num_adapter(self) -> int:
        """All adapter entries, trained or frozen: ``r(d_in + d_out)``."""
        return self.A.numel() + self.B.numel()

    def extra_repr(self) -> str:
        return f"d_in={self.in_features}, d_out={self.out_features}, rank={self.rank}, train={self.train_mode!r}, scaling={self.scaling:g}"


def weight_decay_gap(X: torch.Tensor, B: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Relative gap between the weight decay of LoRA factors and the nuclear norm of a target.

    ``(½(‖B‖_F² + ‖A‖_F²) − ‖X‖_*) / ‖X‖_*``, batched over leading dimensions. By Lemma 5.1 of Recht, Fazel &
    Parrilo (Lemma 2.2 of Jang, Lee & Ryu) the gap is ``≥ 0`` for every factorisation ``B A = X`` and ``0`` at the
    balanced one ``B = U Σ^½``, ``A = Σ^½ Vᵀ``. The function does not require ``B A = X``: for a pair that does not
    reproduce ``X`` (e.g. a factorisation of ``LR_{r-1}(X)``) the gap can be negative, which is how the lemma's
    hypothesis shows up in a check.

    Parameters
    ----------
    X : (..., m, n) floating tensor, no slice zero.
    B : (..., m, r) floating tensor (same leading dimensions as ``X``).
    A : (..., r, n) floating tensor.

    Returns
    -------
    (...) tensor of relative gaps, dtype of ``X``.
    """
    for name, M in (("X", X), ("B", B), ("A", A)):
        if not isinstance(M, torch.Tensor) or not M.is_floating_point() or M.dim() < 2:
            raise ValueError(f"{name} must be a floating tensor with at least 2 dimensions")
        if not torch.isfinite(M).all():
            raise ValueError(f"{name} contains NaN or infinite entries")
    if not (X.shape[:-2] == B.shape[:-2] == A.shape[:-2]):
        raise ValueError(f"leading dimensions differ: X {tuple(X.shape)}, B {tuple(B.shape)}, A {tuple(A.shape)}")
    if B.shape[-2] != X.shape[-2] or A.shape[-1] != X.shape[-1] or B.shape[-1] != A.shape[-2]:
        raise ValueError(f"B {tuple(B.shape[-2:])} @ A {tuple(A.shape[-2:])} cannot have the shape of "
                         f"X {tuple(X.shape[-2:])}")
    nuclear = torch.linalg.svdvals(X).sum(-1)
    if (nuclear == 0).any():
        raise ValueError("X has a zero slice: its nuclear norm is 0 and the relative gap is undefined")
    cost = 0.5 * (B.square().sum((-2, -1)) + A.square().sum((-2, -1)))
    return (cost - nuclear) / nuclear
