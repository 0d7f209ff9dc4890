"""The seed article's ResNet-50/101/152, as a user writes it from the blog post (not built from
the spec): ``resnet-parity verify tests/ports/seed_resnet.py:ResNet50`` must pass it. ``broken``
names one port bug to inject, as users make them: ``eps`` (BatchNorm epsilon 1e-3),
``stride_1x1`` (the stride on the first 1x1 conv), ``missing_relu`` (the first block's second
ReLU left out), ``same_padding`` (TF's 'SAME' on strided layers: the odd pixel bottom/right), ``momentum``
(BatchNorm momentum 0.5: seen only in training)."""

import torch
import torch.nn.functional as F
from torch import nn


class SamePad(nn.Module):
    """TensorFlow's 'SAME' for a stride-2 layer on an even input: k - 2 pixels of padding, the
    odd one at the bottom/right."""

    def __init__(self, module, k):
        super().__init__()
        self.module, self.before, self.after = module, (k - 2) // 2, (k - 2) - (k - 2) // 2

    def forward(self, x):
        return self.module(F.pad(x, (self.before, self.after, self.before, self.after), value=float("-inf") if isinstance(
            self.module, nn.MaxPool2d) else 0.0))


class block(nn.Module):
    def __init__(self, in_channels, intermediate_channels, identity_downsample=None, stride=1, broken=None,
                 first=False):
        super().__init__()
        self.expansion = 4
        eps = 1e-3 if broken == "eps" else 1e-5
        momentum = 0.5 if broken == "momentum" else 0.1
        s1, s2 = (stride, 1) if broken == "stride_1x1" else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, intermediate_channels, kernel_size=1, stride=s1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(intermediate_channels, eps=eps, momentum=momentum)
        conv2 = nn.Conv2d(intermediate_channels, intermediate_channels, kernel_size=3, stride=s2,
                          padding=0 if broken == "same_padding" and s2 == 2 else 1, bias=False)
        self.conv2 = SamePad(conv2, 3) if broken == "same_padding" and s2 == 2 else conv2
        self.bn2 = nn.BatchNorm2d(intermediate_channels, eps=eps, momentum=momentum)
        self.conv3 = nn.Conv2d(intermediate_channels, intermediate_channels * self.expansion, kernel_size=1,
                               stride=1, padding=0, bias=False)
        self.bn3 = nn.BatchNorm2d(intermediate_channels * self.expansion, eps=eps, momentum=momentum)
        self.relu = nn.ReLU()
        self.identity_downsample = identity_downsample
        self.skip_relu = broken == "missing_relu" and first

    def forward(self, x):
        identity = x.clone()
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        x = x if self.skip_relu else self.relu(x)
        x = self.bn3(self.conv3(x))
        if self.identity_downsample is not None:
            identity = self.identity_downsample(identity)
        return self.relu(x + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, image_channels, num_classes, broken=None):
        super().__init__()
        self.broken = broken
        eps = 1e-3 if broken == "eps" else 1e-5
        momentum = 0.5 if broken == "momentum" else 0.1
        self.in_channels = 64
        same = broken == "same_padding"
        conv1 = nn.Conv2d(image_channels, 64, kernel_size=7, stride=2, padding=0 if same else 3, bias=False)
        self.conv1 = SamePad(conv1, 7) if same else conv1
        self.bn1 = nn.BatchNorm2d(64, eps=eps, momentum=momentum)
        self.relu = nn.ReLU()
        pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0 if same else 1)
        self.maxpool = SamePad(pool, 3) if same else pool
        self.layer1 = self._make_layer(block, layers[0], 64, 1, first=True)
        self.layer2 = self._make_layer(block, layers[1], 128, 2)
        self.layer3 = self._make_layer(block, layers[2], 256, 2)
        self.layer4 = self._make_layer(block, layers[3], 512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * 4, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def _make_layer(self, block, num_residual_blocks, intermediate_channels, stride, first=False):
        eps = 1e-3 if self.broken == "eps" else 1e-5
        momentum = 0.5 if self.broken == "momentum" else 0.1
        identity_downsample = None
        if stride != 1 or self.in_channels != intermediate_channels * 4:
            identity_downsample = nn.Sequential(
                nn.Conv2d(self.in_channels, intermediate_channels * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(intermediate_channels * 4, eps=eps, momentum=momentum))
        layers = [block(self.in_channels, intermediate_channels, identity_downsample, stride, self.broken, first)]
        self.in_channels = intermediate_channels * 4
        for _ in range(num_residual_blocks - 1):
            layers.append(block(self.in_channels, intermediate_channels, broken=self.broken))
        return nn.Sequential(*layers)


def ResNet50(img_channel=3, num_classes=1000, broken=None):
    return ResNet(block, [3, 4, 6, 3], img_channel, num_classes, broken)


def ResNet101(img_channel=3, num_classes=1000, broken=None):
    return ResNet(block, [3, 4, 23, 3], img_channel, num_classes, broken)


def ResNet152(img_channel=3, num_classes=1000, broken=None):
    return ResNet(block, [3, 8, 36, 3], img_channel, num_classes, broken)
