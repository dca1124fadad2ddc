import pytest
import torch
import torch.nn.functional as F

from rbgp.nn import RBGPConv2d
from rbgp.ops.im2col import im2col_feature_major


@pytest.mark.parametrize("k,s,p,d,hw", [((3, 3), (1, 1), (1, 1), (1, 1), (8, 8)), ((3, 2), (2, 1), (0, 1), (1, 2), (11, 9)),
                                         ((1, 1), (1, 1), (0, 0), (1, 1), (5, 7)), ((5, 5), (3, 2), (2, 2), (1, 1), (13, 6))])
def test_im2col_matches_unfold(k, s, p, d, hw):
    x = torch.randn(3, 4, *hw)
    cols, oh, ow = im2col_feature_major(x, k, s, p, d)
    ref = F.unfold(x, k, d, p, s)  # (N, C*kh*kw, L)
    assert cols.shape == (ref.shape[1], 3 * oh * ow)
    assert torch.equal(cols, ref.transpose(0, 1).reshape(ref.shape[1], -1))


def test_im2col_too_small_input():
    with pytest.raises(ValueError, match="too small"):
        im2col_feature_major(torch.randn(1, 2, 2, 2), (5, 5), (1, 1), (0, 0), (1, 1))


def test_dilated_rbgp_conv_matches_dense():
    layer = RBGPConv2d(16, 32, 3, stride=1, padding=2, dilation=2, sparsity=0.75)
    x = torch.randn(2, 16, 9, 10)
    ref = F.conv2d(x, layer.dense_weight(), layer.bias, padding=2, dilation=2)
    assert torch.allclose(layer(x), ref, atol=1e-4)
