"""PyTorch twins of ``paddle_suite.vision`` S²-MLP and S²-MLPv2: the speed peer and a test oracle.

Same architecture, same layer names and the same channels-last layout as
``paddle_suite/vision/models.py`` (pad + slice + cat shift, reshape patch merging, split attention
with a C/4 hidden layer), written in ordinary PyTorch. ``load_from_paddle`` copies a paddle
model's weights (linear weights transposed: paddle stores ``[in, out]``, torch ``[out, in]``) so
``bench/vision_speed.py`` can check that both frameworks compute the same logits before timing them.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-6
_SOURCE = {"right": (1, 0), "left": (1, 2), "down": (0, 1), "up": (2, 1), "none": (1, 1)}
S2MLP_DIRECTIONS = ("right", "left", "down", "up")
S2MLPV2_SECOND_DIRECTIONS = ("down", "up", "right", "left")


def spatial_shift(x, directions):
    """Zero-padded one-pixel shifts of equal channel groups of ``x`` ``[B, H, W, C]``."""
    height, width, channels = x.shape[1:]
    group = channels // len(directions)
    padded = F.pad(x, (0, 0, 1, 1, 1, 1))
    pieces, start = [], 0
    for k, direction in enumerate(directions):
        if k + 1 < len(directions) and directions[k + 1] == direction:
            continue
        stop = (k + 1) * group
        row, col = _SOURCE[direction]
        pieces.append(padded[:, row : row + height, col : col + width, start:stop])
        start = stop
    return torch.cat(pieces, dim=-1)


class DropPath(nn.Module):
    def __init__(self, rate=0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = torch.floor(keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype))
        return x * (mask / keep)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class PatchMerge(nn.Module):
    def __init__(self, in_channels, dim, patch, norm=False):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(patch * patch * in_channels, dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS) if norm else None

    def forward(self, x):
        b, h, w, c = x.shape
        p = self.patch
        x = x.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, p * p * c)
        x = self.proj(x)
        return self.norm(x) if self.norm is not None else x


class S2MLPBlock(nn.Module):
    def __init__(self, dim, expansion=4, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc_in = nn.Linear(dim, dim)
        self.fc_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, dim * expansion)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.fc_out(spatial_shift(F.gelu(self.fc_in(self.norm1(x))), S2MLP_DIRECTIONS)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SplitAttention(nn.Module):
    def __init__(self, dim, parts=3, reduction=4):
        super().__init__()
        self.parts = parts
        self.fc1 = nn.Linear(dim, dim // reduction)
        self.fc2 = nn.Linear(dim // reduction, dim * parts)

    def forward(self, stacked):
        b, h, w, k, c = stacked.shape
        summary = stacked.sum(dim=3).mean(dim=(1, 2))
        logits = self.fc2(F.gelu(self.fc1(summary))).reshape(b, 1, 1, k, c)
        return (stacked * torch.softmax(logits, dim=3)).sum(dim=3)


class S2MLPv2Block(nn.Module):
    def __init__(self, dim, expansion=3, drop_path=0.0):
        super().__init__()
        self.directions = S2MLP_DIRECTIONS + S2MLPV2_SECOND_DIRECTIONS + ("none",) * 4
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.expand = nn.Linear(dim, 3 * dim)
        self.split_attention = SplitAttention(dim, parts=3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, dim * expansion)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        b, h, w, c = x.shape
        parts = spatial_shift(self.expand(self.norm1(x)), self.directions).reshape(b, h, w, 3, c)
        x = x + self.drop_path(self.proj(self.split_attention(parts)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MLPBackbone(nn.Module):
    def __init__(self, make_block, dims, depths, patch, num_classes, in_channels=3, drop_path_rate=0.0,
                 stem_norm=False, merge=2):
        super().__init__()
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        layers = []
        for stage, (dim, depth) in enumerate(zip(dims, depths)):
            if stage == 0:
                layers.append(PatchMerge(in_channels, dim, patch, norm=stem_norm))
            else:
                layers.append(PatchMerge(dims[stage - 1], dim, merge))
            layers.extend(make_block(dim, rates.pop(0)) for _ in range(depth))
        self.layers = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, images):
        x = self.layers(images.permute(0, 2, 3, 1))
        return self.head(self.norm(x).mean(dim=(1, 2)))


def s2mlp(dim, depth, patch, expansion=4, num_classes=1000, drop_path_rate=0.0):
    return MLPBackbone(lambda d, dp: S2MLPBlock(d, expansion, dp), (dim,), (depth,), patch, num_classes,
                       drop_path_rate=drop_path_rate, stem_norm=True)


def s2mlpv2(dims, depths, patch, expansion=3, num_classes=1000, drop_path_rate=0.0):
    return MLPBackbone(lambda d, dp: S2MLPv2Block(d, expansion, dp), dims, depths, patch, num_classes,
                       drop_path_rate=drop_path_rate)


#: the torch twins of the registered paddle variants this bench times
TWINS = {
    "s2mlp_deep": lambda **kw: s2mlp(384, 36, 16, 4, **kw),
    "s2mlp_wide": lambda **kw: s2mlp(768, 12, 16, 4, **kw),
    "s2mlpv2_small": lambda **kw: s2mlpv2((192, 384), (4, 14), 7, 3, **kw),
    "s2mlpv2_medium": lambda **kw: s2mlpv2((256, 512), (7, 17), 7, 3, **kw),
    "s2mlp_cifar": lambda **kw: s2mlp(128, 8, 4, 4, **kw),
    "s2mlpv2_cifar": lambda **kw: s2mlpv2((64, 128), (2, 7), 2, 3, **kw),
}


def load_from_paddle(torch_model, paddle_model):
    """Copy every paddle parameter into the twin (same names; linear weights transposed)."""
    source = {name: value.numpy() for name, value in paddle_model.state_dict().items()}
    target = torch_model.state_dict()
    if set(source) != set(target):
        raise KeyError(f"paddle/torch parameter names differ: {sorted(set(source) ^ set(target))[:5]}")
    linear = {name + ".weight" for name, m in torch_model.named_modules() if isinstance(m, nn.Linear)}
    torch_model.load_state_dict(
        {name: torch.from_numpy(source[name].T.copy() if name in linear else source[name]) for name in target}
    )
    return torch_model
