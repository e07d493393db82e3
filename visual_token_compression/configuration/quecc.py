"""Configuration of QueCC (Li et al., 2024): query-conditioned convolutional cross-attention compression."""

from __future__ import annotations

from .base import CompressedVLMConfig, positive_int


class QueCCConfig(CompressedVLMConfig):
    """QueCC: the G x G patch grid, conditioned on the user's question, becomes h x h tokens.

    A depthwise `kernel_size`/`stride` convolution downsamples the query grid to h = (G - kernel_size) // stride + 1
    cells per side; each cell cross-attends to its own G/h x G/h window of multi-level features. Defaults reproduce
    the released setting (CLIP-L/14-336, kernel = stride = 4: 576 -> 36 tokens; 24 -> 1 token, 1 -> 576 tokens).

    As in the original, the attention window is G // h, derived from the convolution's *output* size, not from the
    kernel; the setting is valid when h divides G (the original crashes otherwise). With kernel_size == stride and
    stride dividing G the convolution cell and the attention window coincide.

    The query vector's width is the LLM width (`text_config.hidden_size`); the key/value input width is
    `len(multi_level_feature_layers) * vision width`; the attention width is the vision width.

    Args:
        kernel_size: side of the depthwise convolution kernel (4 in the released scripts).
        stride: stride of that convolution (4 in the released scripts).
        compressor_num_heads: heads of the window cross-attention (8 in the original); must divide the vision width.
        layer_norm_eps: epsilon of the query/key/value/text LayerNorms (1e-6 in the original).
    """

    model_type = "quecc"

    def __init__(
        self,
        kernel_size: int = 4,
        stride: int = 4,
        compressor_num_heads: int = 8,
        layer_norm_eps: float = 1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_size = positive_int("kernel_size", kernel_size)
        self.stride = positive_int("stride", stride)
        self.compressor_num_heads = positive_int("compressor_num_heads", compressor_num_heads)
        self.layer_norm_eps = layer_norm_eps

        grid, width = self.vision_grid_size, self.vision_config.hidden_size
        if width % self.compressor_num_heads != 0:
            raise ValueError(
                f"compressor_num_heads={self.compressor_num_heads} must divide the vision width {width} "
                "(QueCC attends at the vision width)."
            )
        if self.kernel_size > grid:
            raise ValueError(f"kernel_size={self.kernel_size} is larger than the {grid}x{grid} vision grid.")
        out_grid = self.compressed_grid_size
        if grid % out_grid != 0:
            raise ValueError(
                f"kernel_size={self.kernel_size}, stride={self.stride} downsample the {grid}x{grid} vision grid to "
                f"{out_grid}x{out_grid}, which does not divide it into equal attention windows; choose "
                f"kernel_size == stride with a stride that divides {grid}."
            )

    @property
    def compressed_grid_size(self) -> int:
        """Tokens per side after the strided convolution: (G - kernel_size) // stride + 1."""
        return (self.vision_grid_size - self.kernel_size) // self.stride + 1

    @property
    def attention_window(self) -> int:
        """Side of the multi-level window each compressed token attends to: G // compressed_grid_size."""
        return self.vision_grid_size // self.compressed_grid_size

    @property
    def image_seq_length(self) -> int:
        """Placeholder tokens one image takes in the LLM sequence: compressed_grid_size^2."""
        return self.compressed_grid_size**2
