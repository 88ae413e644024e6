"""Benchmark-only renderings of the authors' published forwards, for timing attnzoo's blocks against.

Each class here is written for this benchmark (not copied): an op-for-op rendering of how the paper's
public PyTorch code computes the block's forward -- the same tensor operations in the same order, with
the same intermediate layouts (``view``/``permute`` then ``bmm``, ``nn.GroupNorm``, pooling through
``F.avg_pool2d``, ...), because that is what decides its speed. ``from_attnzoo(block)`` builds one
with a given attnzoo block's weights, so both sides compute the same function (asserted before
timing by ``benchmarks/blocks_vs_reference.py``).

Renderings (labelled by the code they follow):

* ``SaLayerRef``      SA-Net's ``sa_layer`` (Zhang & Yang): grouped reshape, chunk, avg-pool gate,
                      ``nn.GroupNorm`` gate, cat, channel shuffle.
* ``NonLocalRef``     the embedded-Gaussian non-local block of the common PyTorch port of Wang et al.:
                      three 1x1 convs, view/permute, matmul, softmax, matmul, W conv + BN, residual.
* ``CbamRef``         Jongchan/attention-module's CBAM: ChannelGate (Linear MLP over avg and max
                      pools, summed) then SpatialGate (ChannelPool [max; mean], BasicConv = conv + BN).
* ``PamRef``          DANet's ``PAM_Module``: query/key/value convs, bmm energy, softmax, bmm, gamma.
* ``DoubleAttnRef``   A^2-Net's double attention as its public ports compute it: three 1x1 convs,
                      softmax over positions (gather) and over maps (distribute), two bmm, 1x1 conv.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["REFERENCES", "SaLayerRef", "NonLocalRef", "CbamRef", "PamRef", "DoubleAttnRef"]


def _conv_like(src: nn.Conv2d, bias: bool | None = None) -> nn.Conv2d:
    """A fresh Conv2d with ``src``'s weights (and a zero bias where ``src`` has none but bias is asked)."""
    bias = src.bias is not None if bias is None else bias
    conv = nn.Conv2d(src.in_channels, src.out_channels, src.kernel_size, padding=src.padding,
                     dilation=src.dilation, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(src.weight)
        if bias:
            conv.bias.copy_(src.bias if src.bias is not None else torch.zeros(src.out_channels))
    return conv


class SaLayerRef(nn.Module):
    """SA-Net ``sa_layer``: the rendering (GroupNorm with its own affine, set to the identity)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        half = channels // (2 * groups)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sigmoid = nn.Sigmoid()
        self.gn = nn.GroupNorm(half, half)

    @staticmethod
    def channel_shuffle(x, groups):
        b, c, h, w = x.shape
        x = x.reshape(b, groups, -1, h, w)
        x = x.permute(0, 2, 1, 3, 4)
        return x.reshape(b, -1, h, w)

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, -1, h, w)
        x_0, x_1 = x.chunk(2, dim=1)
        xn = self.avg_pool(x_0)
        xn = self.cweight * xn + self.cbias
        xn = x_0 * self.sigmoid(xn)
        xs = self.gn(x_1)
        xs = self.sweight * xs + self.sbias
        xs = x_1 * self.sigmoid(xs)
        out = torch.cat([xn, xs], dim=1)
        out = out.reshape(b, -1, h, w)
        return self.channel_shuffle(out, 2)

    @classmethod
    def from_attnzoo(cls, block):
        ref = cls(block.channels, block.groups)
        ref.gn.eps = block.eps
        with torch.no_grad():
            for n in ("cweight", "cbias", "sweight", "sbias"):
                getattr(ref, n).copy_(getattr(block, n))
        return ref


class NonLocalRef(nn.Module):
    """Embedded-Gaussian non-local block (no subsampling): the rendering."""

    def __init__(self, g, theta, phi, w, bn) -> None:
        super().__init__()
        self.g, self.theta, self.phi = g, theta, phi
        self.W = nn.Sequential(w, bn)
        self.inter = g.out_channels

    def forward(self, x):
        b = x.size(0)
        g_x = self.g(x).view(b, self.inter, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(b, self.inter, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(b, self.inter, -1)
        f = torch.matmul(theta_x, phi_x)
        f_div_c = F.softmax(f, dim=-1)
        y = torch.matmul(f_div_c, g_x)
        y = y.permute(0, 2, 1).contiguous().view(b, self.inter, *x.size()[2:])
        return self.W(y) + x

    @classmethod
    def from_attnzoo(cls, block):
        return cls(_conv_like(block.g), _conv_like(block.theta), _conv_like(block.phi, bias=True),
                   _conv_like(block.w_z), copy.deepcopy(block.norm))


class CbamRef(nn.Module):
    """Jongchan/attention-module CBAM: the rendering."""

    def __init__(self, block) -> None:
        super().__init__()
        ch, sp = block.channel, block.spatial
        c, rd = block.channels, ch.rd_channels
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, rd), nn.ReLU(), nn.Linear(rd, c))
        with torch.no_grad():
            self.mlp[1].weight.copy_(ch.fc1.weight[:, :, 0, 0])
            self.mlp[1].bias.copy_(ch.fc1.bias)
            self.mlp[3].weight.copy_(ch.fc2.weight[:, :, 0, 0])
            self.mlp[3].bias.copy_(ch.fc2.bias)
        k = sp.conv.kernel_size[0]
        self.conv = nn.Conv2d(2, 1, k, padding=(k - 1) // 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(sp.conv.weight[:, [1, 0]])  # the authors pool [max; mean]
        self.bn = copy.deepcopy(sp.norm)

    def forward(self, x):
        avg = F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
        mx = F.max_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
        att = self.mlp(avg) + self.mlp(mx)
        x = x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))

    @classmethod
    def from_attnzoo(cls, block):
        return cls(block)


class PamRef(nn.Module):
    """DANet ``PAM_Module``: the rendering."""

    def __init__(self, query, key, value, gamma) -> None:
        super().__init__()
        self.query_conv, self.key_conv, self.value_conv = query, key, value
        self.gamma = nn.Parameter(gamma.detach().clone().reshape(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        b, c, h, w = x.size()
        proj_query = self.query_conv(x).view(b, -1, w * h).permute(0, 2, 1)
        proj_key = self.key_conv(x).view(b, -1, w * h)
        energy = torch.bmm(proj_query, proj_key)
        attention = self.softmax(energy)
        proj_value = self.value_conv(x).view(b, -1, w * h)
        out = torch.bmm(proj_value, attention.permute(0, 2, 1))
        out = out.view(b, c, h, w)
        return self.gamma * out + x

    @classmethod
    def from_attnzoo(cls, block):
        return cls(_conv_like(block.query), _conv_like(block.key, bias=True), _conv_like(block.value), block.gamma)


class DoubleAttnRef(nn.Module):
    """A^2-Net double attention: the rendering, with attnzoo's residual around it."""

    def __init__(self, conv_a, conv_b, conv_v, proj) -> None:
        super().__init__()
        self.convA, self.convB, self.convV, self.conv_reconstruct = conv_a, conv_b, conv_v, proj
        self.c_m, self.c_n = conv_a.out_channels, conv_b.out_channels

    def forward(self, x):
        b, c, h, w = x.shape
        a = self.convA(x)
        bm = self.convB(x)
        v = self.convV(x)
        tmp_a = a.view(b, self.c_m, -1)
        attention_maps = F.softmax(bm.view(b, self.c_n, -1), dim=-1)
        attention_vectors = F.softmax(v.view(b, self.c_n, -1), dim=1)
        global_descriptors = torch.bmm(tmp_a, attention_maps.permute(0, 2, 1))
        tmp_z = global_descriptors.matmul(attention_vectors)
        tmp_z = tmp_z.view(b, self.c_m, h, w)
        return x + self.conv_reconstruct(tmp_z)

    @classmethod
    def from_attnzoo(cls, block):
        return cls(_conv_like(block.phi), _conv_like(block.theta, bias=True), _conv_like(block.rho), _conv_like(block.proj))


# attnzoo block name -> (reference class, label naming the code it renders, kind of shape)
REFERENCES = {
    "shuffle": (SaLayerRef, "SA-Net sa_layer (rendering)", "spatial"),
    "nonlocal": (NonLocalRef, "embedded-Gaussian non-local (rendering)", "selfattn"),
    "cbam": (CbamRef, "Jongchan/attention-module CBAM (rendering)", "spatial"),
    "danet_pam": (PamRef, "DANet PAM_Module (rendering)", "selfattn"),
    "a2": (DoubleAttnRef, "A^2-Net double attention (rendering)", "selfattn"),
}
