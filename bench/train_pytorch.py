"""The PyTorch reference of bench/train_vs_pytorch.sh: flowsynth's tabular model written the way a
PyTorch user would write it (eager mode, nn.Module, torch.optim), trained on the rows and sizes that
`train_throughput --dump DIR` wrote, printing one JSON line per epoch like that example does.

Same model as flowsynth's (TabSyn's layer for layer): the VAE's tokenizer, three two-block
pre-norm Transformers (mu, log-variance, decoder; attention through
F.scaled_dot_product_attention, no key bias), per-column heads, loss mse + ce + beta * kl, AdamW;
the EDM denoiser (MLPDiffusion with a class embedding, EDM preconditioning and loss, label dropout)
with Adam. Idiomatic choices: tensors indexed by a randperm per epoch (no DataLoader collation),
zero_grad(set_to_none=True), torch.randn for the noise, and the denoiser stage trained on latents
encoded once before its first epoch (TabSyn's way), which that epoch's time does not include.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIGMA_DATA, P_MEAN, P_STD = 0.5, -1.2, 1.2


def uniform_(t, bound):
    with torch.no_grad():
        t.uniform_(-bound, bound)
    return t


class Tokenizer(nn.Module):
    def __init__(self, n_num, cards, d):
        super().__init__()
        bound = 1 / math.sqrt(d)
        self.weight = nn.Parameter(uniform_(torch.empty(n_num + 1, d), bound))
        self.bias = nn.Parameter(uniform_(torch.empty(n_num + len(cards), d), bound))
        self.embeddings = nn.Parameter(uniform_(torch.empty(sum(cards), d), bound))
        self.register_buffer("offsets", torch.tensor([0] + list(np.cumsum(cards)[:-1]), dtype=torch.long))

    def forward(self, num, cat):
        ones = torch.ones(num.shape[0], 1)
        x = self.weight[None] * torch.cat([ones, num], 1)[:, :, None]
        x = torch.cat([x, F.embedding(cat + self.offsets[None], self.embeddings)], 1)
        return x + F.pad(self.bias, (0, 0, 1, 0))[None]


class Block(nn.Module):
    def __init__(self, d, heads, ffn, first):
        super().__init__()
        self.heads = heads
        self.norm0 = None if first else nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        for lin in (self.q, self.v):
            nn.init.zeros_(lin.bias)
        self.out = nn.Linear(d, d) if heads > 1 else None
        self.norm1 = nn.LayerNorm(d)
        self.linear0, self.linear1 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x):
        b, t, d = x.shape
        r = x if self.norm0 is None else self.norm0(x)
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(split(self.q(r)), split(self.k(r)), split(self.v(r)))
        a = a.transpose(1, 2).reshape(b, t, d)
        x = x + (a if self.out is None else self.out(a))
        return x + self.linear1(F.relu(self.linear0(self.norm1(x))))


class Transformer(nn.Sequential):
    def __init__(self, m):
        super().__init__(*[Block(m["d_token"], m["n_heads"], m["ffn_dim"], i == 0) for i in range(m["n_layers"])])


class Vae(nn.Module):
    def __init__(self, m):
        super().__init__()
        d, self.n_num, cards = m["d_token"], m["n_num"], m["cardinalities"]
        self.tokenizer = Tokenizer(self.n_num, cards, d)
        self.enc_mu, self.enc_logvar, self.decoder = Transformer(m), Transformer(m), Transformer(m)
        gain = 1 / math.sqrt(2)
        self.num_weight = nn.Parameter(uniform_(torch.empty(self.n_num, d), gain * math.sqrt(6 / (d + self.n_num))))
        self.cat_heads = nn.ModuleList(nn.Linear(d, k) for k in cards)
        for head, k in zip(self.cat_heads, cards):
            nn.init.xavier_uniform_(head.weight, gain=gain)

    def encode_mean(self, num, cat):
        return self.enc_mu(self.tokenizer(num, cat))[:, 1:].flatten(1)

    def loss(self, num, cat, beta):
        x = self.tokenizer(num, cat)
        mu, logvar = self.enc_mu(x), self.enc_logvar(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        h = self.decoder(z[:, 1:])
        recon = (h[:, : self.n_num] * self.num_weight[None]).sum(-1)
        mse = (num - recon).pow(2).mean()
        ce = sum(F.cross_entropy(head(h[:, self.n_num + i]), cat[:, i]) for i, head in enumerate(self.cat_heads))
        ce = ce / len(self.cat_heads)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean()
        return mse + ce + beta * kl


class Denoiser(nn.Module):
    def __init__(self, dim, width, classes):
        super().__init__()
        half = width // 2
        self.register_buffer("freqs", (1 / 10_000) ** (torch.arange(half, dtype=torch.float32) / half))
        self.proj = nn.Linear(dim, width)
        self.time = nn.Sequential(nn.Linear(2 * half, width), nn.SiLU(), nn.Linear(width, width))
        self.class_embed = nn.Embedding(classes + 1, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, 2 * width), nn.SiLU(),
            nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, dim))
        self.null = classes

    def forward(self, x, c_noise, labels):
        arg = c_noise[:, None] * self.freqs[None]
        emb = self.time(torch.cat([arg.sin(), arg.cos()], 1)) + self.class_embed(labels)
        return self.mlp(self.proj(x) + emb)

    def loss(self, z, labels, dropout):
        n = z.shape[0]
        sigma = (torch.randn(n) * P_STD + P_MEAN).exp()
        labels = labels.masked_fill(torch.rand(n) < dropout, self.null)
        weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
        s = sigma[:, None]
        y = z + torch.randn_like(z) * s
        denom = s**2 + SIGMA_DATA**2
        f = self(y * denom.rsqrt(), s.log().flatten() / 4, labels)
        d = y * (SIGMA_DATA**2 / denom) + f * (s * SIGMA_DATA / denom.sqrt())
        return (weight[:, None] * (d - z).pow(2)).mean()


def epochs(stage, n, batch, count, threads, step):
    """Runs `count` epochs of `step(idx)`, each over a fresh randperm of the n rows."""
    for e in range(1, count + 1):
        start = time.perf_counter()
        total = 0.0
        for idx in torch.randperm(n).split(batch):
            total += step(idx) * len(idx)
        seconds = time.perf_counter() - start
        print(json.dumps({"impl": "pytorch", "stage": stage, "epoch": e, "rows": n, "threads": threads,
                          "seconds": seconds, "rows_per_second": n / seconds, "loss": total / n}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dump", required=True, help="directory written by train_throughput --dump")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vae-epochs", type=int, default=4)
    ap.add_argument("--diffusion-epochs", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    m = json.load(open(os.path.join(a.dump, "meta.json")))
    n, n_num, n_cat = m["rows"], m["n_num"], len(m["cardinalities"])
    num = torch.from_numpy(np.fromfile(os.path.join(a.dump, "num.f32"), dtype=np.float32).reshape(n, n_num))
    cat = torch.from_numpy(np.fromfile(os.path.join(a.dump, "cat.i64"), dtype=np.int64).reshape(n, n_cat))
    label = torch.from_numpy(np.fromfile(os.path.join(a.dump, "label.i64"), dtype=np.int64))
    batch = m["batch"]

    vae = Vae(m)
    opt = torch.optim.AdamW(vae.parameters(), lr=m["vae_lr"], weight_decay=m["vae_weight_decay"])

    def vae_step(idx):
        opt.zero_grad(set_to_none=True)
        loss = vae.loss(num[idx], cat[idx], m["beta"])
        loss.backward()
        opt.step()
        return loss.item()

    epochs("vae", n, batch, a.vae_epochs, a.threads, vae_step)
    if a.diffusion_epochs == 0:
        return

    with torch.no_grad():
        raw = torch.cat([vae.encode_mean(num[i], cat[i]) for i in torch.arange(n).split(4096)])
        z = (raw - raw.mean(0)) / 2
    net = Denoiser(z.shape[1], m["denoiser_width"], m["classes"])
    dopt = torch.optim.Adam(net.parameters(), lr=m["diffusion_lr"])

    def diffusion_step(idx):
        dopt.zero_grad(set_to_none=True)
        loss = net.loss(z[idx], label[idx], m["label_dropout"])
        loss.backward()
        dopt.step()
        return loss.item()

    epochs("diffusion", n, batch, a.diffusion_epochs, a.threads, diffusion_step)


if __name__ == "__main__":
    main()
