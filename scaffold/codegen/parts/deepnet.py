"""DeepNet's constants (Wang et al., 2022): the residual scale of its DeepNorm block and the init gain
of its projections, for a decoder-only model of ``num_hidden_layers`` layers."""


def deepnet_alpha(num_hidden_layers: int) -> float:
    """DeepNet's residual scale for a decoder-only model: ``alpha = (2L)^(1/4)`` (Wang et al., 2022)."""
    return (2 * num_hidden_layers) ** 0.25


def deepnet_beta(num_hidden_layers: int) -> float:
    """DeepNet's init gain for a decoder-only model: ``beta = (8L)^(-1/4)`` (Wang et al., 2022)."""
    return (8 * num_hidden_layers) ** -0.25
