"""Convolutional baselines, so that "RNN vs conv" is one switch in a config.

Both are bias-free: every block that uses a layer from this package follows it with a norm,
which would absorb a bias.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import Layer2d, check_positive, register_layer

__all__ = ["ConvLayer", "DSConvLayer"]


def _check_kernel(kernel_size: int) -> None:
    check_positive(kernel_size=kernel_size)
    if kernel_size % 2 == 0:
        # padding k // 2 keeps H x W only for odd k
        raise ValueError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}")


@register_layer("conv", family="conv", order=1, marker="s")
class ConvLayer(Layer2d):
    """``k x k`` convolution, stride 1, padding ``k // 2``, no bias.

    Shapes: ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    * params: ``C_out * C_in * k^2``
    * MACs:   ``H * W * C_out * C_in * k^2``
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        check_positive(in_channels=in_channels, out_channels=out_channels)
        _check_kernel(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)

    def closed_form_params(self) -> int:
        return self.out_channels * self.in_channels * self.kernel_size**2

    def closed_form_macs(self, height: int, width: int) -> int:
        return height * width * self.closed_form_params()


@register_layer("dsconv", family="conv", order=2, marker="D")
class DSConvLayer(Layer2d):
    """Depthwise-separable convolution: ``k x k`` depthwise, then ``1 x 1`` pointwise; no biases.

    Shapes: ``(B, C_in, H, W) -> (B, C_in, H, W) -> (B, C_out, H, W)``.

    * params: ``C_in * k^2 + C_out * C_in``
    * MACs:   ``H * W * (C_in * k^2 + C_out * C_in)``
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        check_positive(in_channels=in_channels, out_channels=out_channels)
        _check_kernel(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))

    def closed_form_params(self) -> int:
        return self.in_channels * self.kernel_size**2 + self.out_channels * self.in_channels

    def closed_form_macs(self, height: int, width: int) -> int:
        return height * width * self.closed_form_params()
