#!/usr/bin/python3
"""emo_torch.py -- an independent PyTorch implementation of the EMO model (docs/emo.md sections 1, 3, 4).

It exists to prove the C++ engine right: written from the specification alone, with plain autograd for the
gradients, in float64 by default (so its own rounding error is negligible next to the engine's fp32).
Only Debian's python3 with torch and numpy is needed; safetensors files are read and written by hand below.

Protocol
--------
  python3 tests/reference/emo_torch.py --model DIR --inputs IN.safetensors --out OUT.safetensors
  python3 tests/reference/emo_torch.py --self-test      (writes its own tiny checkpoint and checks itself)

DIR  config.json + model.safetensors or shards (Hugging Face layout, emo.md section 2), F32 or BF16 tensors.
IN   tensors
       tokens      I32 [B, T]
       targets     I32 [B, T]       -1 = no loss at this position
       pool_sizes  I32 [L, B, S]    optional: EMO pool size per layer, row and segment (S = max segments,
                                    unused entries -1); when absent, evaluation uses pool_eval
     __metadata__ strings
       mode                      emo | standard | subset | dense
       training                  true | false
       intra_document_attention  true | false
       output_z, lb, router_z    loss weights (defaults 1e-5, 0.1, 0.001)
       eos_id                    EOS token id (segments)
       pool_eval                 d_eval (default 32)
       subset                    JSON list per layer of the kept ORIGINAL routed expert indices (mode subset)
OUT  logits                     F32 [B*T, V]
     loss.total, loss.ce, loss.output_z, loss.lb, loss.router_z      F32 [1]
       (lb and router_z are sum_l X_l / L before the alpha / beta weights;
        total = ce + w_z * output_z + w_lb * lb + w_rz * router_z)
     loss.lb.L, loss.router_z.L   F32 [1]  per MoE layer L (LB_L and Z_L)
     grad.<hf tensor name>        F32      d loss.total / d parameter, for every parameter
     per MoE layer L:
       router_probs.L  F32 [N, Er]   softmax over all routed experts (unmasked)
       chosen.L        I32 [N, Kr]   chosen routed experts by decreasing score (ties: lower index), -1 = unused
       weights.L       F32 [N, Kr]   their weights (0 for an unused slot)
       counts.L        F32 [Er]      C_e: (token, slot) assignments in this micro-batch
     and the same values in __metadata__ for the scalar losses, printed with full precision.

Conventions (where emo.md leaves a choice, the engine's documented one):
  * Segments: a position t > 0 holding EOS starts a new segment (EOS routed with the document after it).
  * Intra-document attention: a token attends only to earlier tokens of its own document, where an EOS ends
    its own document (OLMo-core's document lengths): the EOS sees the document it closes, the next one
    does not see it. The two rules differ only at the EOS positions.
  * RoPE position = index in the row.
  * CE and the output z-loss are means over the positions with target >= 0; LB and router z-loss sum over
    all B*T tokens and divide by G = the positions with target >= 0 (label tokens); Pbar_e is the mean over
    all B*T tokens; C_e = this micro-batch's counts.
  * Pool: the top-d routed experts by summed probability mass over the segment, d clamped to [1, Er].
  * A token with no allowed routed expert (subset keeping only the shared one) has no router z term.
"""

import argparse
import json
import math
import os
import struct
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header, data section.

_NP_OF = {"F32": np.float32, "I32": np.int32, "F64": np.float64, "I64": np.int64, "F16": np.float16}


def read_safetensors(path):
    """Returns ({name: numpy array}, metadata dict). BF16 is widened to float32."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    data = blob[8 + header_len :]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(_NP_OF[info["dtype"]]).newbyteorder("<"))
        tensors[name] = array.reshape(info["shape"]).copy()
    return tensors, metadata


def _to_bf16_bytes(array):
    """float32 -> bfloat16 bytes, round to nearest even."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def write_safetensors(path, tensors, metadata=None, dtypes=None):
    """tensors: {name: numpy array}; dtypes: optional {name: "BF16"} to narrow float tensors."""
    dtypes = dtypes or {}
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if dtypes.get(name) == "BF16":
            dtype, raw = "BF16", _to_bf16_bytes(array)
        elif array.dtype in (np.int32, np.int64):
            dtype, raw = "I32", array.astype("<i4").tobytes()
        else:
            dtype, raw = "F32", array.astype("<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


# ---------------------------------------------------------------------------------------------------------
# The model, one small module per piece.


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_cos_sin(T, hd, theta, dtype):
    inv_freq = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # [hd/2]
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    angles = torch.cat([angles, angles], dim=-1)  # [T, hd]
    return angles.cos().to(dtype), angles.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.H, self.Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = d // self.H
        self.theta = cfg.get("rope_theta", 500000.0)
        self.q_proj = nn.Linear(d, self.H * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.Hkv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.Hkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.H * self.hd, d, bias=False)

    def forward(self, x, allowed):
        # x [B, T, d]; allowed [B, T, T] True where query t may attend key s
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.hd).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, self.Hkv, self.hd).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.v_proj(x).view(B, T, self.Hkv, self.hd).transpose(1, 2)
        cos, sin = rope_cos_sin(T, self.hd, self.theta, x.dtype)  # positions = index in the row
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = self.H // self.Hkv  # query head h reads kv head h // group
        k = k.repeat_interleave(group, dim=1)  # [B, H, T, hd]
        v = v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.hd)  # [B, H, T, T]
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        y = F.softmax(scores, dim=-1) @ v  # [B, H, T, hd]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.hd))


class SwiGLU(nn.Module):
    """One expert (or the dense MLP): down(silu(gate(x)) * up(x))."""

    def __init__(self, d, f):
        super().__init__()
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Route:
    """What routing of one layer decided (kept for the outputs and the losses)."""


def stable_desc(x):
    """Indices sorting x descending, ties by lower index."""
    return torch.sort(x, dim=-1, descending=True, stable=True).indices


def route(logits, Kr, mode, segments, pool_sizes, subset):
    """logits [N, Er] routed router logits. segments: list of (token indices tensor) per (row, segment) in the
    order of pool_sizes' flattening; pool_sizes: list of d per segment (mode emo); subset: kept routed ids."""
    N, Er = logits.shape
    r = Route()
    r.probs = F.softmax(logits, dim=-1)  # [N, Er] unmasked
    allowed = torch.ones(N, Er, dtype=torch.bool)
    if mode == "emo":
        allowed[:] = False
        probs = r.probs.detach()
        for tokens, d in zip(segments, pool_sizes):
            d = min(max(int(d), 1), Er)
            mass = probs[tokens].sum(0)  # [Er] summed probability over the segment
            members = stable_desc(mass)[:d]
            for t in tokens.tolist():
                allowed[t, members] = True
    elif mode == "subset":
        allowed[:] = False
        allowed[:, list(subset)] = True
    masked = logits.masked_fill(~allowed, float("-inf"))  # [N, Er]
    any_allowed = allowed.any(-1)  # [N]
    safe = torch.where(any_allowed[:, None], masked, torch.zeros_like(masked))
    r.scores = torch.where(allowed, F.softmax(safe, dim=-1), torch.zeros_like(masked))  # [N, Er]
    r.lse = torch.where(any_allowed, torch.logsumexp(safe, dim=-1), torch.zeros(N, dtype=logits.dtype))
    # top Kr among the allowed experts (selection has no gradient), raw scores as weights
    rank_key = r.scores.detach().masked_fill(~allowed, -1.0)
    order = stable_desc(rank_key)[:, :Kr]  # [N, Kr]
    used = torch.gather(allowed, 1, order)  # [N, Kr]
    r.chosen = torch.where(used, order, torch.full_like(order, -1))
    r.weights = torch.gather(r.scores, 1, order) * used  # [N, Kr]
    r.counts = torch.zeros(Er, dtype=torch.float64)
    for e in r.chosen[r.chosen >= 0].tolist():
        r.counts[e] += 1
    return r


class MoE(nn.Module):
    def __init__(self, d, f, E, n_shared, K):
        super().__init__()
        self.gate = nn.Linear(d, E, bias=False)  # router; the shared experts' rows are never used
        self.experts = nn.ModuleList([SwiGLU(d, f) for _ in range(E)])
        self.E, self.n_shared, self.Kr = E, n_shared, K - n_shared

    def forward(self, x, ctx):
        # x [N, d]
        Er = self.E - self.n_shared
        logits = self.gate(x)[:, :Er]  # [N, Er]
        r = route(logits, self.Kr, ctx["mode"], ctx["segments"], ctx["pool_sizes"], ctx["subset"])
        out = torch.zeros_like(x)
        for e in range(Er):
            rows, slots = (r.chosen == e).nonzero(as_tuple=True)
            if len(rows):
                out = out.index_add(0, rows, r.weights[rows, slots][:, None] * self.experts[e](x[rows]))
        for e in range(Er, self.E):  # shared experts, weight exactly 1
            out = out + self.experts[e](x)
        return out, r


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg.get("rms_norm_eps", 1e-6)
        self.pre_attention_layernorm = RMSNorm(d, eps)
        self.self_attn = Attention(cfg)
        self.pre_feedforward_layernorm = RMSNorm(d, eps)
        self.is_moe = is_moe(cfg)
        if self.is_moe:
            E = (cfg.get("num_experts_per_layer") or [cfg["num_experts"]] * (layer + 1))[layer]
            ns = (cfg.get("num_shared_experts_per_layer") or [cfg.get("num_shared_experts", 1)] * (layer + 1))[layer]
            self.mlp = MoE(d, cfg["intermediate_size"], E, ns, cfg["num_experts_per_tok"])
        else:
            self.mlp = SwiGLU(d, cfg["intermediate_size"])

    def forward(self, h, attn_allowed, ctx):
        B, T, d = h.shape
        h = h + self.self_attn(self.pre_attention_layernorm(h), attn_allowed)
        x = self.pre_feedforward_layernorm(h).reshape(B * T, d)
        if self.is_moe:
            y, r = self.mlp(x, ctx)
        else:
            y, r = self.mlp(x), None
        return h + y.view(B, T, d), r


def is_moe(cfg):
    return cfg.get("model_type", "emo") != "olmo2_noqknorm_prenorm"


class EmoModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        V, d = cfg["vocab_size"], cfg["hidden_size"]
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(V, d)
        self.model.layers = nn.ModuleList([Block(cfg, l) for l in range(cfg["num_hidden_layers"])])
        self.model.norm = RMSNorm(d, cfg.get("rms_norm_eps", 1e-6))
        self.lm_head = nn.Linear(d, V, bias=False)

    def forward(self, tokens, attention_ids, intra_document, ctx_for_layer):
        # tokens, attention_ids [B, T]
        B, T = tokens.shape
        causal = torch.ones(T, T, dtype=torch.bool).tril()  # [T, T]
        allowed = causal[None].expand(B, T, T)
        if intra_document:
            allowed = allowed & (attention_ids[:, :, None] == attention_ids[:, None, :])
        h = self.model.embed_tokens(tokens)  # [B, T, d]
        routes = []
        for l, block in enumerate(self.model.layers):
            h, r = block(h, allowed, ctx_for_layer(l))
            routes.append(r)
        logits = self.lm_head(self.model.norm(h)).reshape(B * T, -1)  # [N, V]
        return logits, routes


# ---------------------------------------------------------------------------------------------------------
# Losses (emo.md section 4).


def losses(logits, targets, routes, slots, w):
    """All terms of emo.md section 4. slots[l] = K_r of MoE layer l; w = the loss weights."""
    counted = targets >= 0
    lse = torch.logsumexp(logits, dim=-1)  # [N]
    ce = F.cross_entropy(logits[counted], targets[counted].long())
    output_z = (lse[counted] ** 2).mean()
    moe = [(l, r) for l, r in enumerate(routes) if r is not None]
    L = max(len(moe), 1)
    terms = {"ce": ce, "output_z": output_z}
    lb_sum = logits.new_zeros(())
    z_sum = logits.new_zeros(())
    G = int(counted.sum()) or targets.numel()  # label tokens of the step (all positions if none has a target)
    for l, r in moe:
        N, Er = r.scores.shape
        pbar = r.scores.mean(0)  # [Er] carries gradient
        lb = (Er / slots[l]) * (r.counts.to(logits.dtype) * pbar).sum() / G  # counts carry no gradient
        z = (r.lse**2).sum() / G
        terms[f"lb.{l}"], terms[f"router_z.{l}"] = lb, z
        lb_sum = lb_sum + lb
        z_sum = z_sum + z
    terms["lb"], terms["router_z"] = lb_sum / L, z_sum / L
    terms["total"] = ce + w["output_z"] * output_z + w["lb"] * terms["lb"] + w["router_z"] * terms["router_z"]
    return terms


# ---------------------------------------------------------------------------------------------------------
# Running one case.


def load_model(model_dir, dtype):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):  # sharded: read every shard named by the weight map
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    weights = {}
    for shard in shards:
        weights.update(read_safetensors(os.path.join(model_dir, shard))[0])
    model = EmoModel(cfg).to(dtype)
    state = model.state_dict()
    missing = set(state) - set(weights)
    extra = set(weights) - set(state)
    if missing or extra:
        sys.exit(f"emo_torch: {model_dir}: missing tensors {sorted(missing)[:5]}, unknown {sorted(extra)[:5]}")
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float64)).to(dtype) for k, v in weights.items()})
    return model, cfg


def segment_ids(tokens, eos_id):
    """[B, T] segment index per position for the EMO pool: t > 0 holding EOS starts a new segment."""
    starts = tokens == eos_id
    starts[:, 0] = False
    return torch.cumsum(starts.long(), dim=1)


def attention_ids(tokens, eos_id):
    """[B, T] document index per position for attention: a document ends with (and includes) its EOS."""
    ends = (tokens == eos_id).long()
    return torch.cumsum(ends, dim=1) - ends  # EOS strictly before t


def run(model, cfg, inputs, meta):
    """Forward, losses and backward of one micro-batch; returns ({name: array} for OUT, metadata)."""
    tokens = torch.from_numpy(inputs["tokens"].astype(np.int64))  # [B, T]
    targets = torch.from_numpy(inputs["targets"].astype(np.int64))
    B, T = tokens.shape
    mode = meta.get("mode", "standard")
    training = meta.get("training", "true") == "true"
    intra = meta.get("intra_document_attention", "false") == "true"
    w = {k: float(meta.get(k, default)) for k, default in (("output_z", 1e-5), ("lb", 0.1), ("router_z", 0.001))}
    doc_ids = segment_ids(tokens, int(meta.get("eos_id", cfg.get("eos_token_id", -1))))
    subset = json.loads(meta["subset"]) if "subset" in meta else None
    pool_eval = int(meta.get("pool_eval", 32))
    pool_sizes = inputs.get("pool_sizes")
    if mode == "emo" and training and pool_sizes is None:
        sys.exit("emo_torch: EMO training needs pool_sizes")

    segments, where = [], []  # token indices (flattened) of each (row, segment)
    for b in range(B):
        for s in range(int(doc_ids[b].max()) + 1):
            segments.append((doc_ids[b] == s).nonzero(as_tuple=True)[0] + b * T)
            where.append((b, s))

    def ctx_for_layer(l):
        if pool_sizes is not None:
            sizes = [int(pool_sizes[l, b, s]) for b, s in where]
        else:
            sizes = [pool_eval] * len(where)
        return {"mode": mode, "segments": segments, "pool_sizes": sizes,
                "subset": subset[l] if subset is not None else None}

    eos_id = int(meta.get("eos_id", cfg.get("eos_token_id", -1)))
    logits, routes = model(tokens, attention_ids(tokens, eos_id), intra, ctx_for_layer)
    slots = [block.mlp.Kr if block.is_moe else 0 for block in model.model.layers]
    terms = losses(logits, targets.view(-1), routes, slots, w)
    model.zero_grad()
    terms["total"].backward()

    out = {"logits": logits.detach().float().numpy()}
    for k, v in terms.items():
        out["loss." + k] = np.array([v.item()], dtype=np.float32)
    for name, p in model.named_parameters():
        out["grad." + name] = p.grad.float().numpy() if p.grad is not None else np.zeros(p.shape, np.float32)
    for l, r in enumerate(routes):
        if r is None:
            continue
        out[f"router_probs.{l}"] = r.probs.detach().float().numpy()
        out[f"chosen.{l}"] = r.chosen.numpy().astype(np.int32)
        out[f"weights.{l}"] = r.weights.detach().float().numpy()
        out[f"counts.{l}"] = r.counts.float().numpy()
    out_meta = {"loss." + k: repr(v.item()) for k, v in terms.items()}
    return out, out_meta


def main_run(args):
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    model, cfg = load_model(args.model, dtype)
    inputs, meta = read_safetensors(args.inputs)
    out, out_meta = run(model, cfg, inputs, meta)
    write_safetensors(args.out, out, out_meta)


# ---------------------------------------------------------------------------------------------------------
# Self test: a tiny checkpoint of its own, checked by finite differences and the routing rules.


def tiny_config(dense=False):
    cfg = {"architectures": ["EmoForCausalLM"], "model_type": "emo", "vocab_size": 32, "hidden_size": 16,
           "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "rope_theta": 500000.0, "rms_norm_eps": 1e-6, "num_experts": 6, "num_experts_per_tok": 3,
           "num_shared_experts": 1, "eos_token_id": 1}
    if dense:
        cfg["model_type"] = "olmo2_noqknorm_prenorm"
    return cfg


def self_test():
    torch.manual_seed(0)
    B, T = 2, 10
    tokens = torch.randint(2, 32, (B, T))
    tokens[0, 4] = 1
    tokens[1, 0] = 1
    tokens[1, 7] = 1
    targets = torch.roll(tokens, -1, 1)
    targets[:, -1] = -1
    pool = np.full((2, B, 3), -1, np.int32)
    pool[:, 0, :2] = [[2, 4], [3, 5]]
    pool[:, 1, :2] = [[5, 2], [1, 3]]
    cases = [("emo", "true", tiny_config()), ("standard", "true", tiny_config()),
             ("subset", "false", tiny_config()), ("dense", "true", tiny_config(dense=True))]
    with tempfile.TemporaryDirectory() as tmp:
        for mode, training, cfg in cases:
            model = EmoModel(cfg).double()
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() > 1:
                        p.normal_(0, 0.3)
            os.makedirs(os.path.join(tmp, mode), exist_ok=True)
            with open(os.path.join(tmp, mode, "config.json"), "w") as f:
                json.dump(cfg, f)
            write_safetensors(os.path.join(tmp, mode, "model.safetensors"),
                              {k: v.float().numpy() for k, v in model.state_dict().items()})
            meta = {"mode": mode, "training": training, "intra_document_attention": "true", "eos_id": "1",
                    "subset": json.dumps([[0, 2, 4], [1]])}
            inputs = {"tokens": tokens.numpy().astype(np.int32), "targets": targets.numpy().astype(np.int32)}
            if mode == "emo":
                inputs["pool_sizes"] = pool
            write_safetensors(os.path.join(tmp, "in.safetensors"), inputs, meta)
            inputs, meta = read_safetensors(os.path.join(tmp, "in.safetensors"))
            model, cfg = load_model(os.path.join(tmp, mode), torch.float64)
            out, _ = run(model, cfg, inputs, meta)
            # finite differences on a few entries of every parameter
            worst = 0.0
            for name, p in model.named_parameters():
                for i in range(0, p.numel(), max(1, p.numel() // 3)):
                    flat = p.data.view(-1)
                    keep, h = flat[i].item(), 1e-6
                    flat[i] = keep + h
                    up = float(run_total(model, cfg, inputs, meta))
                    flat[i] = keep - h
                    down = float(run_total(model, cfg, inputs, meta))
                    flat[i] = keep
                    numeric = (up - down) / (2 * h)
                    analytic = float(out["grad." + name].reshape(-1)[i])
                    worst = max(worst, abs(numeric - analytic) / max(1e-3, abs(numeric)))
            print(f"self-test {mode:8s}: total {out['loss.total'][0]:.6f}, worst gradient rel. error {worst:.2e}")
            assert worst < 1e-3, worst
            if mode != "dense":
                chosen = out["chosen.0"]
                if mode == "subset":
                    assert set(chosen[chosen >= 0].tolist()) <= {0, 2, 4}
                    assert (out["chosen.1"][:, 0] == 1).all() and (out["chosen.1"][:, 1:] == -1).all()
                if mode == "emo":  # every token of a segment chooses within its pool of d experts
                    for b, s, d in ((0, 0, 2), (0, 1, 4), (1, 0, 5), (1, 1, 2)):
                        doc = segment_ids(tokens, 1)[b]
                        rows = (doc == s).nonzero(as_tuple=True)[0] + b * T
                        used = set(chosen[rows.numpy()].reshape(-1).tolist()) - {-1}
                        assert len(used) <= d, (b, s, used, d)
                        if d < 3:
                            assert (chosen[rows.numpy(), d:] == -1).all()
    print("self-test passed")


def run_total(model, cfg, inputs, meta):
    """loss.total (for finite differences; the float64 value from the metadata)."""
    _, meta_out = run(model, cfg, inputs, meta)
    return float(meta_out["loss.total"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--inputs")
    parser.add_argument("--out")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        self_test()
    elif args.model and args.inputs and args.out:
        main_run(args)
    else:
        parser.error("give --model, --inputs and --out, or --self-test")
