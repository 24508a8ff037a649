"""Layers built from :mod:`recbole_mamba.ops`: the Mamba mixer, LSA, attention, FFN, dropout, the input embedding."""

from recbole_mamba.layers.attention import CausalSelfAttention
from recbole_mamba.layers.backend import set_backend
from recbole_mamba.layers.dropout import Dropout
from recbole_mamba.layers.embedding import ScaledPositionalEmbedding
from recbole_mamba.layers.ffn import FeedForward
from recbole_mamba.layers.lsa import InterestPooling, LowRankSelfAttention
from recbole_mamba.layers.mamba import Mamba
from recbole_mamba.layers.mamba_block import MambaBlock
from recbole_mamba.layers.state import LayerState, StatefulLayer, SubState, prefixed, stack_step, stack_with_state

__all__ = ["Mamba", "MambaBlock", "LayerState", "StatefulLayer", "SubState", "prefixed", "stack_step", "stack_with_state", "LowRankSelfAttention", "InterestPooling", "CausalSelfAttention", "FeedForward", "Dropout",
           "ScaledPositionalEmbedding", "set_backend"]
