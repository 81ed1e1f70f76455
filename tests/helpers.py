"""Small builders shared by the tests: tiny models with random, far-from-uniform weights."""

import torch
from torch import nn

from harness.models import SpecialTokens, build_model
from harness.nn.transformer import BackboneConfig

VOCAB = 50  # ids 0..47 real tokens, 48 = BOS/EOS, 49 = [MASK]
SPECIAL = SpecialTokens(bos=48, eos=48, mask=49)


def tiny_model(name: str, max_len: int = 32, seed: int = 0, scale: float = 0.3, dtype=torch.float64, **options):
    """A tiny model whose weights are drawn large enough that its outputs are far from uniform."""
    torch.manual_seed(seed)
    cfg = BackboneConfig.from_preset("tiny", vocab_size=VOCAB, max_len=max_len)
    model = build_model(name, cfg, SPECIAL, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
    return model.to(dtype).eval()


def random_batch(n: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, SPECIAL.bos, (n, length), generator=g)
    x[:, 0] = SPECIAL.bos
    return x


class CountForwards:
    """Counts the trunk's forwards, the query positions they ran (rows × tokens) and, for
    cached forwards, (rows, keys attended) as the mask's last dimension gives them."""

    def __init__(self, net: nn.Module):
        self.calls, self.tokens, self.shapes, self.rows_and_keys = 0, 0, [], []
        self.handle = net.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        self.tokens += args[0].numel()
        self.shapes.append(tuple(args[0].shape))
        if len(args) > 3 and args[3] is not None:
            self.rows_and_keys.append((args[0].shape[0], args[2].shape[-1]))
