"""The VQGAN patch discriminator and its hinge losses (Esser et al., 2021; Isola et al., 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchDiscriminator", "adaptive_weight", "hinge_discriminator_loss"]


class PatchDiscriminator(nn.Module):
    """A PatchGAN: ``num_layers`` stride-2 4×4 convolutions, then two stride-1 ones; every output
    logit judges one receptive-field patch (70×70 px for 3 layers).

    Shapes: images (B, C, H, W) -> logits (B, 1, H/2^num_layers - 2, W/2^num_layers - 2).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers + 1):
            stride = 2 if i < num_layers else 1
            new_width = channels * min(2 ** i, 8)
            layers += [nn.Conv2d(width, new_width, 4, stride, 1, bias=False), nn.BatchNorm2d(new_width),
                       nn.LeakyReLU(0.2)]
            width = new_width
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():  # the DCGAN initialisation the reference VQGAN uses
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(real))) / 2 + mean(relu(1 + D(fake))) / 2."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance: ||∇_w L_rec|| / ||∇_w L_G|| at the decoder's last weight w, so the
    adversarial gradient starts at the scale of the reconstruction gradient (no graph kept)."""
    rec_grad, = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)
    gen_grad, = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)
    return (rec_grad.norm() / (gen_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
