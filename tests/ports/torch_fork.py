"""A company's fork of torchvision's ResNet, as users write one: torchvision's own ``Bottleneck``
blocks, but 48 channels wide, depths 2-3-4-1, a 1-channel stem and 10 classes. No preset has
this structure; ``resnet-parity verify`` must read it off the arrays and pass it."""

from torch import nn
from torchvision.models.resnet import Bottleneck, conv1x1


class ForkResNet(nn.Module):
    def __init__(self, layers=(2, 3, 4, 1), width=48, in_channels=1, num_classes=10, stride_on_1x1=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = width, []
        for i, depth in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            down = nn.Sequential(conv1x1(inplanes, planes * 4, stride), nn.BatchNorm2d(planes * 4))
            blocks = [Bottleneck(inplanes, planes, stride, down)]
            if stride_on_1x1 and stride > 1:  # the original paper's v1: the stride on the first 1x1
                blocks[0].conv1.stride, blocks[0].conv2.stride = (2, 2), (1, 1)
            inplanes = planes * 4
            blocks += [Bottleneck(inplanes, planes) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(self.stages(x)).flatten(1))
