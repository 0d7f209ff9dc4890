"""keras.applications' ResNet50V2, ported to PyTorch by hand (not built from the spec): pre-activation
blocks, the stride on the 3x3 conv of each stage's last block, biased convs where no BatchNorm
follows, BatchNorm epsilon 1.001e-5, and Keras' ZeroPadding2D before the stem's max pool, which
here pools a conv output that no ReLU has clipped. ``resnet-parity verify
tests/ports/torch_resnet_v2.py:ResNet50V2`` must pass it.

``broken="pool_padding"``: the pool written the torch way, ``nn.MaxPool2d(3, 2, padding=1)``,
which pads with -inf: the usual slip when porting this model, and one that changes the output."""

import torch.nn.functional as F
from torch import nn


class PreActBottleneck(nn.Module):
    def __init__(self, cin, width, stride, first):
        super().__init__()
        cout = 4 * width
        self.preact_bn = nn.BatchNorm2d(cin, eps=1.001e-5)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if first else None
        self.pool = nn.MaxPool2d(1, stride) if not first and stride > 1 else None
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1.001e-5)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, eps=1.001e-5)
        self.conv3 = nn.Conv2d(width, cout, 1)

    def forward(self, x):
        pre = F.relu(self.preact_bn(x))
        short = self.shortcut(pre) if self.shortcut is not None else self.pool(x) if self.pool is not None else x
        y = F.relu(self.bn1(self.conv1(pre)))
        y = F.relu(self.bn2(self.conv2(y)))
        return self.conv3(y) + short


class ResNetV2(nn.Module):
    def __init__(self, depths, num_classes=1000, broken=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3)
        self.torch_pool = broken == "pool_padding"
        self.pool = nn.MaxPool2d(3, 2, padding=1 if self.torch_pool else 0)
        blocks, cin = [], 64
        for stage, depth in enumerate(depths):
            for i in range(depth):
                stride = 2 if i == depth - 1 and stage < len(depths) - 1 else 1
                blocks.append(PreActBottleneck(cin, 64 * 2**stage, stride, first=i == 0))
                cin = 256 * 2**stage
        self.blocks = nn.Sequential(*blocks)
        self.post_bn = nn.BatchNorm2d(cin, eps=1.001e-5)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x if self.torch_pool else F.pad(x, (1, 1, 1, 1)))  # Keras' ZeroPadding2D(1)
        x = F.relu(self.post_bn(self.blocks(x)))
        return self.fc(x.mean((2, 3)))


def ResNet50V2(num_classes=1000, broken=None):
    return ResNetV2((3, 4, 6, 3), num_classes, broken)
