"""A compact ResNet (basic blocks, BatchNorm) sized for training from scratch on two CPU cores.

With widths [32, 64, 128, 256], one block per stage and a stride-2 stem plus max-pool it is a
ResNet-10 at half ResNet-18's width (1.2 M parameters); docs/models.md has its training speed.
"""

from torch import Tensor, nn

from flower_model.config import SmallCnnConfig
from flower_model.models.registry import register_model

STEM_KERNEL = 3


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # Zero-init the last BN so each block starts as identity: faster, steadier from scratch.
        nn.init.zeros_(self.bn2.weight)

    def forward(self, inputs: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(inputs)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(inputs))


class SmallCNN(nn.Module):
    def __init__(self, config: SmallCnnConfig, num_classes: int) -> None:
        super().__init__()
        first = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, first, STEM_KERNEL, config.stem_stride, 1, bias=False),
            nn.BatchNorm2d(first),
            nn.ReLU(inplace=True),
        )
        if config.stem_pool:
            self.stem.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        layers = []
        in_channels = first
        for index, (width, blocks) in enumerate(zip(config.widths, config.blocks)):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, width, stride))
                in_channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(in_channels, num_classes)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.pool(self.features(self.stem(images))))


@register_model("small_cnn", SmallCnnConfig)
def small_cnn(config: SmallCnnConfig, num_classes: int) -> nn.Module:
    return SmallCNN(config, num_classes)
