"""A compact PyTorch copy of the official ParNet, the reference for the converter.

Written from imankgoyal/NonDeepNetworks, `imagenet/timm/models/simplenet_impl/`
(`simpnet.py`: SimpNet, RepVGGOur; `repvgg.py`: RepVGGBlock, conv_bn;
`utils.py`: SE1, ConvSig, MultiBatchNorm2d, Concat2d, channel_shuffle) and
timm's ClassifierHead, keeping only the unfused inference path. Module names
are the official ones, so `state_dict()` keys equal a released checkpoint's.
Differences: `num_classes` is an argument (the official SimpNet fixes 1000).
"""

import torch
from torch import nn


def channel_shuffle(x, groups):
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, -1, height, width)


def conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups=1):
    result = nn.Sequential()
    result.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                        padding, groups=groups, bias=False))
    result.add_module("bn", nn.BatchNorm2d(out_channels))
    return result


class ConvSig(nn.Module):
    def __init__(self, c_in, c_out, g=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, 1, 0, groups=g, bias=False)
        self.act = nn.Sigmoid()

    def forward(self, x):
        return self.act(self.conv(x))


class SE1(nn.Module):
    def __init__(self, c_in, c_out, g=1, ver=1):
        super().__init__()
        self.ver = ver
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.cvsig = ConvSig(c_in, c_out, g=g)

    def forward(self, x):
        x = self.cvsig(self.avg_pool(x))
        return 2 * x if self.ver == 2 else x


class RepVGGBlock(nn.Module):
    """The official block with `padding=1, avg_pool=True, se_block=True`."""

    def __init__(self, in_channels, out_channels, stride, groups, activation):
        super().__init__()
        self.groups = groups
        self.nonlinearity = activation
        self.rbr_identity = (nn.BatchNorm2d(in_channels)
                             if out_channels == in_channels and stride == 1 else None)
        self.rbr_dense = conv_bn(in_channels, out_channels, 3, stride, 1, groups)
        if stride == 2:
            self.rbr_1x1 = nn.Sequential(
                nn.AvgPool2d(2, 2), conv_bn(in_channels, out_channels, 1, 1, 0, groups))
        else:
            self.rbr_1x1 = conv_bn(in_channels, out_channels, 1, stride, 0, groups)
        self.se = SE1(in_channels, out_channels, g=groups,
                      ver=2 if (out_channels != in_channels or stride != 1) else 1)

    def forward(self, inputs):
        id_out = 0
        if self.rbr_identity is not None:
            id_out = self.rbr_identity(inputs)
            id_out = id_out * self.se(id_out)
        out = self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out
        if self.rbr_identity is None:
            out = out * self.se(inputs)
        out = self.nonlinearity(out)
        return channel_shuffle(out, self.groups) if self.groups > 1 else out


class RepVGGOur(nn.Module):
    def __init__(self, inplanes, planes, stride=1, groups=1, additional_branches=()):
        super().__init__()
        # The official test: a nested [['swish']] (the released yaml) gives ReLU.
        activation = nn.SiLU() if "swish" in additional_branches else nn.ReLU()
        self.block = RepVGGBlock(inplanes, planes, stride, groups, activation)

    def forward(self, x):
        return self.block(x)


class MultiBatchNorm2d(nn.Module):
    def __init__(self, n1, n2):
        super().__init__()
        self.b1 = nn.BatchNorm2d(n1)
        self.b2 = nn.BatchNorm2d(n2)

    def forward(self, x):
        x1, x2 = x
        return self.b1(x1), self.b2(x2)


class Concat2d(nn.Module):
    """`Concat2d(shuffle=True)`: channels interleaved."""

    def forward(self, x):
        batch, _, height, width = x[0].shape
        out = torch.cat([part.unsqueeze(1) for part in x], 1).transpose(1, 2)
        return torch.reshape(out, (batch, -1, height, width))


class ClassifierHead(nn.Module):
    def __init__(self, in_chs, num_classes, drop_rate=0.0):
        super().__init__()
        self.drop_rate = drop_rate
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_chs, num_classes)

    def forward(self, x):
        x = self.global_pool(x)
        x = nn.functional.dropout(x, self.drop_rate, self.training)
        return self.fc(x)


class SimpNet(nn.Module):
    def __init__(self, planes, num_blocks=(5, 6, 6, 1), dropout_lin=0.0,
                 additional_branches=(), num_classes=1000):
        super().__init__()
        branches = additional_branches
        last_planes, planes = planes[-1], list(planes[:-1])
        num_blocks = num_blocks[:-1]
        in_planes = min(64, planes[0])
        self.inits = nn.ModuleList([nn.Sequential(
            RepVGGOur(3, in_planes, 2, additional_branches=branches),
            RepVGGOur(in_planes, planes[0], 2, additional_branches=branches))])
        for in_plane, out_plane in zip(planes[:-1], planes[1:]):
            self.inits.append(RepVGGOur(in_plane, out_plane, 2, additional_branches=branches))
        self.streams = nn.ModuleList(
            nn.Sequential(*[RepVGGOur(plane, plane, 1, additional_branches=branches)
                            for _ in range(num_block - 1)])
            for num_block, plane in zip(num_blocks, planes))
        self.downsamples_2 = nn.ModuleList()
        for index, (in_plane, out_plane) in enumerate(zip(planes[:-1], planes[1:])):
            if index == 0:
                self.downsamples_2.append(
                    RepVGGOur(in_plane, out_plane, 2, additional_branches=branches))
            else:
                self.downsamples_2.append(nn.Sequential(
                    MultiBatchNorm2d(in_plane, in_plane),
                    Concat2d(),
                    RepVGGOur(2 * in_plane, out_plane, 2, groups=2,
                              additional_branches=branches)))
        self.combine = nn.Sequential(
            MultiBatchNorm2d(planes[-1], planes[-1]),
            Concat2d(),
            RepVGGOur(2 * planes[-1], planes[-1], 1, groups=2, additional_branches=branches),
            RepVGGOur(planes[-1], last_planes, 2, additional_branches=branches))
        self.head = ClassifierHead(last_planes, num_classes, drop_rate=dropout_lin)

    def forward(self, img):
        x, x_list = img, []
        for init in self.inits:
            x = init(x)
            x_list.append(x)
        y_old = None
        for index, (x, stream) in enumerate(zip(x_list, self.streams)):
            y = stream(x)
            if y_old is None:
                y_old = self.downsamples_2[index](y)
            elif index < len(self.downsamples_2):
                y_old = self.downsamples_2[index]((y, y_old))
            else:
                y_old = (y, y_old)
        return self.head(self.combine(y_old))


def randomized(model, seed=0):
    """`model` in eval mode with random weights and BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.2, generator=generator)
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(0, module.weight[0].numel() ** -0.5,
                                      generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1, generator=generator)
    return model.eval()
