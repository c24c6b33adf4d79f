"""Digest of every step of one pinned base-model training step, op by op, to find where two CPUs part.

Run from the project root with the project's venv:  .venv/bin/python tests/demo/numerics/op_digests.py > mine.txt
then compare with a digest file recorded on another CPU (beside this script): the first line that differs names
the first op whose bits differ. It re-executes itself under the demo's floating-point pin
(slowed_plugin.demo.numerics.pinned_env), so it measures exactly what the demo's workers compute.

Recorded: ``amd-epyc-zen3.txt`` (AMD EPYC, Zen 3, AVX2 without AVX-512) and ``intel-xeon-spr.txt`` (Intel Xeon of
the Sapphire Rapids class), torch 2.13.0 CPU. They differ only in ``prim.adamw_step`` and the ``step.*`` lines of
the 2-D weights: torch's non-fused AdamW takes ``exp_avg_sq.sqrt()`` through MKL's ``vsSqrt``, whose COMPATIBLE
branch is not correctly rounded and rounds differently on the two vendors (``tests/demo/test_numerics.py``).
Keep its output format: the recorded files are compared line by line.
"""

import hashlib
import os
import sys

from slowed_plugin.demo.numerics import PINNED_ENV, numerics_record, pinned_env

if any(os.environ.get(k) != v for k, v in PINNED_ENV.items()):
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], pinned_env(os.environ))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from slowed_plugin.demo.base_model import BaseSettings, collate, encode  # noqa: E402
from slowed_plugin.demo.world import build_world  # noqa: E402
from slowed_plugin.tiny import build_model, build_tokenizer, vocab_size  # noqa: E402


def h(t) -> str:
    if isinstance(t, (tuple, list)):
        t = [x for x in t if torch.is_tensor(x)]
        return hashlib.sha256(b"".join(x.detach().contiguous().float().numpy().tobytes() for x in t)).hexdigest()[:16]
    if not torch.is_tensor(t):
        t = getattr(t, "logits", None) if hasattr(t, "logits") else None
        if t is None:
            return "-"
    return hashlib.sha256(t.detach().contiguous().float().numpy().tobytes()).hexdigest()[:16]


def out(name, value):
    print(f"{name} {value}", flush=True)


rec = numerics_record()
out("# cpu", rec["cpu"].replace(" ", "_"))
out("# torch", torch.__version__)
torch.set_num_threads(1)

# 1. primitives on fixed inputs
g = torch.Generator().manual_seed(0)
a, b = torch.randn(67, 129, generator=g), torch.randn(129, 61, generator=g)
out("prim.randn", h(a))
out("prim.matmul_67x129x61", h(a @ b))
x = torch.randn(16, 38, 128, generator=g)
w = torch.randn(384, 128, generator=g)
out("prim.linear_16x38x128_384", h(F.linear(x, w)))
out("prim.exp", h(torch.exp(x)))
out("prim.log", h(torch.log(x.abs() + 1e-3)))
out("prim.rsqrt", h(torch.rsqrt(x.abs() + 1e-3)))
out("prim.softmax", h(torch.softmax(x, -1)))
out("prim.log_softmax", h(torch.log_softmax(x, -1)))
out("prim.silu", h(F.silu(x)))
out("prim.sigmoid", h(torch.sigmoid(x)))
out("prim.tanh", h(torch.tanh(x)))
out("prim.pow_mean_rsqrt", h(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)))
out("prim.sum_big", h(x.sum()))
q, k, v = (torch.randn(16, 4, 38, 32, generator=g, requires_grad=True) for _ in range(3))
o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
out("prim.sdpa_fwd", h(o))
o.sum().backward()
out("prim.sdpa_bwd", h([q.grad, k.grad, v.grad]))
logits, target = torch.randn(600, 500, generator=g, requires_grad=True), torch.randint(0, 500, (600,), generator=g)
ce = F.cross_entropy(logits, target)
out("prim.cross_entropy", h(ce))
ce.backward()
out("prim.cross_entropy_bwd", h(logits.grad))
p = torch.randn(300, 200, generator=g, requires_grad=True)
opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.01)
p.grad = torch.randn(300, 200, generator=g)
opt.step()
out("prim.adamw_step", h(p))

# 2. the base-model build's first step, module by module
settings = BaseSettings()
world = build_world(settings.world)
tok = build_tokenizer(world.texts())
out("tokenizer.vocab", hashlib.sha256(repr(sorted(tok.get_vocab().items())).encode()).hexdigest()[:16])
model = build_model(
    settings.family, vocab_size(tok), hidden=settings.hidden, layers=settings.layers, seed=settings.seed
)
model.train()
out(
    "init.state",
    hashlib.sha256(
        b"".join(t.contiguous().numpy().tobytes() for _, t in sorted(model.state_dict().items()))
    ).hexdigest()[:16],
)
rows = [encode(tok, e.prompt, e.completion) for e in world.base["harmful"][:8] + world.base["arithmetic"][:8]]
batch = collate(rows, tok.pad_token_id)
order = []
for name, module in model.named_modules():
    if name:
        module.register_forward_hook(lambda m, i, o, name=name: order.append((name, h(o))))
loss = model(**batch).loss
for name, d in order:
    out(f"fwd.{name}", d)
out("loss", h(loss))
loss.backward()
for name, prm in sorted(model.named_parameters()):
    out(f"grad.{name}", h(prm.grad))
norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
out("clip.total_norm", h(norm))
optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
optimizer.step()
for name, prm in sorted(model.named_parameters()):
    out(f"step.{name}", h(prm))
