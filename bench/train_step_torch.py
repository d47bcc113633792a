#!/usr/bin/python3
"""train_step_torch.py -- the PyTorch side of bench_train_step: one EMO training step in float32.

A competent PyTorch implementation of the same step as the engine (docs/emo.md sections 1, 3, 4),
written for speed rather than as a specification (that is tests/reference/emo_torch.py, whose safetensors
reader it reuses):
  * experts stacked per layer ([E, F, d] gate/up, [E, d, F] down) and unbound into views, so the backward
    gathers each weight's gradient in one stack instead of E scatters;
  * tokens sorted by expert (one argsort of the (token, slot) assignments), gathered once and split per
    expert, one matmul per expert and projection, weighted outputs added back with one index_add;
  * EMO pools vectorised: probability mass per segment by one index_add, ranks by one sort, the pool of every
    token by one gather (no Python loop over tokens or segments);
  * attention as batched matmuls with one precomputed causal + intra-document mask;
  * one logsumexp of the output logits for cross-entropy and the output z-loss;
  * torch.optim.AdamW (foreach), no weight decay on embeddings and norms, as the engine.

Protocol (bench_train_step drives it): prints "ready ..." once loaded; then each line "step" on stdin runs
zero_grad, forward, loss, backward, AdamW and prints "<seconds> <loss before the update>"; "quit" ends.

  train_step_torch.py --model DIR --inputs IN.safetensors [--threads 2] [--steps N]  (--steps: standalone)
"""

import argparse
import json
import math
import os
import sys
import time

# Before torch starts its OpenMP pool: idle OpenMP workers must not spin while OpenBLAS's own threads run the
# matmuls (both would then fight for the 2 cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from emo_torch import read_safetensors  # noqa: E402


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Step:
    def __init__(self, model_dir, inputs_path):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        weights, _ = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        inputs, meta = read_safetensors(inputs_path)
        self.cfg = cfg
        self.d, self.V = cfg["hidden_size"], cfg["vocab_size"]
        self.H, self.Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = self.d // self.H
        self.L, self.E = cfg["num_hidden_layers"], cfg["num_experts"]
        self.ns = cfg.get("num_shared_experts", 1)
        self.Er, self.Kr = self.E - self.ns, cfg["num_experts_per_tok"] - self.ns
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.lr = float(meta.get("lr", 1e-4))
        self.loss_w = (1e-5, 0.1, 0.001)  # output z, alpha, beta (the release's)

        def param(name):
            return torch.nn.Parameter(torch.from_numpy(weights[name].astype(np.float32)))

        def stacked(layer, proj):
            prefix = f"model.layers.{layer}.mlp.experts."
            return torch.nn.Parameter(
                torch.from_numpy(np.stack([weights[f"{prefix}{e}.{proj}.weight"] for e in range(self.E)])))

        self.embed = param("model.embed_tokens.weight")
        self.norm = param("model.norm.weight")
        self.lm_head = param("lm_head.weight")
        self.layers = []
        for l in range(self.L):
            p = f"model.layers.{l}."
            self.layers.append({
                "attn_norm": param(p + "pre_attention_layernorm.weight"),
                "ffn_norm": param(p + "pre_feedforward_layernorm.weight"),
                "q": param(p + "self_attn.q_proj.weight"), "k": param(p + "self_attn.k_proj.weight"),
                "v": param(p + "self_attn.v_proj.weight"), "o": param(p + "self_attn.o_proj.weight"),
                "router": param(p + "mlp.gate.weight"),
                "gate": stacked(l, "gate_proj"), "up": stacked(l, "up_proj"), "down": stacked(l, "down_proj"),
            })
        no_decay = [self.embed, self.norm] + [x[k] for x in self.layers for k in ("attn_norm", "ffn_norm")]
        decay = [self.lm_head] + [x[k] for x in self.layers for k in ("q", "k", "v", "o", "router", "gate", "up",
                                                                      "down")]
        self.params = no_decay + decay
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=self.lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)

        # The batch: tokens, targets, segments (EOS at t > 0 opens one), masks, pools (fixed for the run).
        self.tokens = torch.from_numpy(inputs["tokens"].astype(np.int64))  # [B, T]
        self.B, self.T = self.tokens.shape
        self.targets = torch.from_numpy(inputs["targets"].astype(np.int64)).reshape(-1)  # [N]
        eos = int(meta["eos_id"])
        starts = self.tokens == eos
        starts[:, 0] = False
        doc = torch.cumsum(starts.long(), dim=1)  # [B, T] segment within the row
        causal = torch.ones(self.T, self.T, dtype=torch.bool).tril()
        allowed = causal[None] & (doc[:, :, None] == doc[:, None, :])  # [B, T, T]
        bias = torch.zeros(self.B, 1, self.T, self.T).masked_fill(~allowed[:, None], float("-inf"))
        self.attn_bias = bias.expand(self.B, self.H, self.T, self.T).reshape(-1, self.T, self.T)  # [B*H, T, T]
        S = int(doc.max()) + 1
        self.segment = (doc + torch.arange(self.B)[:, None] * S).reshape(-1)  # [N] global segment id
        self.segments = self.B * S
        pools = torch.from_numpy(inputs["pool_sizes"].astype(np.int64))  # [L, B, S], -1 = no such segment
        self.pool_sizes = pools.clamp(1, self.Er).reshape(self.L, self.segments)  # [L, B*S]
        assert int(pools[pools >= 0].min()) >= self.Kr, "pool sizes below the routed slots"
        inv_freq = cfg.get("rope_theta", 500000.0) ** (-torch.arange(0, self.hd, 2, dtype=torch.float64) / self.hd)
        angles = torch.arange(self.T, dtype=torch.float64)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)  # [T, hd]
        self.cos, self.sin = angles.cos().float(), angles.sin().float()

    def attention(self, x, w):
        B, T, H, Hkv, hd = self.B, self.T, self.H, self.Hkv, self.hd
        q = (x @ w["q"].t()).view(B, T, H, hd).transpose(1, 2)  # [B, H, T, hd]
        k = (x @ w["k"].t()).view(B, T, Hkv, hd).transpose(1, 2)  # [B, Hkv, T, hd]
        v = (x @ w["v"].t()).view(B, T, Hkv, hd).transpose(1, 2)
        q = q * self.cos + rotate_half(q) * self.sin
        k = k * self.cos + rotate_half(k) * self.sin
        if H != Hkv:
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        scores = torch.baddbmm(self.attn_bias,
                               q.reshape(B * H, T, hd), k.reshape(B * H, T, hd).transpose(1, 2),
                               alpha=1.0 / math.sqrt(hd))  # [B*H, T, T]
        y = torch.bmm(torch.softmax(scores, dim=-1), v.reshape(B * H, T, hd))  # [B*H, T, hd]
        return y.view(B, H, T, hd).transpose(1, 2).reshape(B * T, H * hd) @ w["o"].t()

    def route(self, logits, layer):
        """EMO pools (emo.md section 3) for all segments at once. logits [N, Er]."""
        probs = torch.softmax(logits.detach(), dim=-1)  # [N, Er]
        mass = torch.zeros(self.segments, self.Er).index_add_(0, self.segment, probs)  # [segments, Er]
        order = torch.sort(mass, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(self.Er).expand_as(order))
        in_pool = rank < self.pool_sizes[layer][:, None]  # [segments, Er]
        masked = logits.masked_fill(~in_pool[self.segment], float("-inf"))  # [N, Er]
        scores = torch.softmax(masked, dim=-1)
        lse = torch.logsumexp(masked, dim=-1)  # [N]
        weights, chosen = scores.topk(self.Kr, dim=-1)  # [N, Kr], raw scores as weights
        return scores, lse, weights, chosen

    def experts(self, x, w, weights, chosen):
        """Routed experts by sorted dispatch, plus the shared expert(s) over every token. x [N, d]."""
        N = x.shape[0]
        flat = chosen.reshape(-1)  # [N*Kr]
        order = torch.argsort(flat, stable=True)
        token = order // self.Kr  # token of each sorted assignment
        counts_e = torch.bincount(flat, minlength=self.Er)  # [Er] C_e of this micro-batch
        counts = counts_e.tolist()
        # split (not slicing): its backward is one cat, where each slice's would add a full-size zero tensor.
        xs = x[token].split(counts)  # per expert [m_e, d], gathered once
        gates, ups, downs = w["gate"].unbind(0), w["up"].unbind(0), w["down"].unbind(0)
        outs = [(F.silu(xe @ gates[e].t()) * (xe @ ups[e].t())) @ downs[e].t()
                for e, xe in enumerate(xs) if counts[e]]
        ys = torch.cat(outs) * weights.reshape(-1)[order][:, None]  # [A, d]
        out = torch.zeros(N, self.d).index_add_(0, token, ys)
        for e in range(self.Er, self.E):  # shared, weight exactly 1
            out = out + (F.silu(x @ gates[e].t()) * (x @ ups[e].t())) @ downs[e].t()
        return out, counts_e.to(torch.float32)

    def loss(self):
        N = self.B * self.T
        h = self.embed[self.tokens.reshape(-1)]  # [N, d]
        lb_sum, z_sum = 0.0, 0.0
        for l, w in enumerate(self.layers):
            h = h + self.attention(rms_norm(h, w["attn_norm"], self.eps).view(self.B, self.T, self.d), w)
            x = rms_norm(h, w["ffn_norm"], self.eps)
            logits = x @ w["router"][:self.Er].t()  # [N, Er]
            scores, lse, weights, chosen = self.route(logits, l)
            y, counts = self.experts(x, w, weights, chosen)
            h = h + y
            lb_sum = lb_sum + (self.Er / self.Kr) * (counts * scores.mean(0)).sum() / N
            z_sum = z_sum + (lse ** 2).mean()
        logits = rms_norm(h, self.norm, self.eps) @ self.lm_head.t()  # [N, V]
        lse = torch.logsumexp(logits, dim=-1)  # [N]
        counted = self.targets >= 0
        target_logit = logits.gather(1, self.targets.clamp(min=0)[:, None])[:, 0]
        ce = (lse - target_logit)[counted].mean()
        output_z = (lse[counted] ** 2).mean()
        wz, alpha, beta = self.loss_w
        return ce + wz * output_z + alpha * lb_sum / self.L + beta * z_sum / self.L

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        self.opt.step()
        return loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0, help="standalone: time this many steps and exit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    step = Step(args.model, args.inputs)
    if args.steps:
        for _ in range(args.steps):
            t = time.perf_counter()
            loss = step.step()
            print(f"{time.perf_counter() - t:.3f} s, loss {loss:.6f}", flush=True)
        return
    print(f"ready torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command == "step":
            t = time.perf_counter()
            loss = step.step()
            print(f"{time.perf_counter() - t!r} {loss!r}", flush=True)


if __name__ == "__main__":
    main()
