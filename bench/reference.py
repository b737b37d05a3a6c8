#!/usr/bin/env python3
"""The PyTorch reference for `prism bench`: exactly the same work in PyTorch eager (transformers'
BERT, default attention implementation) and Captum, on the same thread count.

Workloads (batch B x T tokens, default 16 x 128), per model size:
  infer  encoder + 2-class head forward, no grad                       sequences/s
  infer-bf16  the same under torch.autocast("cpu", bfloat16) (oneDNN's AMX kernels), against
         prism's linear layers in bf16 on AMX; the table also gives the ratio to f32 PyTorch
  train  forward (dropout on) + cross-entropy + backward + clip + AdamW  sequences/s
  train-bf16  the same with forward and loss under torch.autocast("cpu", bfloat16) (f32 master
         weights; backward follows autocast's dtypes), against `precision = "bf16"` in prism
  ig     Captum LayerIntegratedGradients on the word embeddings, one example of T tokens,
         50 Gauss-Legendre steps, internal batch B, [PAD] baseline, target softmax class 1,
         with the convergence delta (one extra forward, as prism computes it)  examples/s
  ig-bf16  the same under torch.autocast("cpu", bfloat16), against `prism explain --bf16` (linear
         layers forward and backward in bf16 on AMX); the table also gives the ratio to f32 Captum
  mlm    15% of positions masked; encoder forward, MLM head (tied decoder) at the masked
         positions only, cross-entropy, backward, clip, AdamW                tokens/s
  mlm-bf16  the same under torch.autocast("cpu", bfloat16), as train-bf16
  rtd    ELECTRA's replaced-token detection: the size as an ElectraForPreTraining
         discriminator, an ElectraForMaskedLM generator a quarter as wide (whole heads) on its
         embeddings, 15% masked, replacements sampled from the generator (torch.multinomial),
         MLM + 50 * BCE, backward, clip, AdamW over both                    tokens/s
Sizes: tiny (H32 L2, the test fixture's shape), mini (H256 L4 FFN1024 V30522), minilm (the real
checkpoint prism fetched: `prism fetch model minilm`), base (H768 L12 FFN3072 V30522).

    pip install torch transformers captum
    python bench/reference.py [--sizes tiny,mini] [--threads 2] [--json out.json]
    python bench/reference.py --compare [--prism target/release/prism]   # both, with ratios
    python bench/reference.py --compare --device cuda --prism target/cuda/release/prism  # on a GPU

--compare runs `prism bench --json -` with the same arguments first, then this script, one after
the other on the same machine, and prints prism / PyTorch for every row.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

# bf16 workloads and the f32 workload each is also compared with.
F32_OF = {"infer-bf16": "infer", "ig-bf16": "ig", "train-bf16": "train", "mlm-bf16": "mlm"}

# Where the models run (--device); timings wait for the GPU to finish.
DEV = torch.device("cpu")


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()

SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100),
    "mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, vocab_size=30522),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=30522),
}
# ModernBERT at prism bench's sizes: mini (H256, L4) and base (ModernBERT-base's shape), a
# global layer every third, local windows of 128 tokens, rotary thetas 160,000 / 10,000.
MODERNBERT_SIZES = {
    "modernbert-mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384,
                            vocab_size=30522),
    "modernbert-base": dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
                            vocab_size=30522),
}

# DeBERTa-v3 at prism bench's sizes: mini (H256, L4) and base (DeBERTa-v3-base's shape), v3's
# disentangled attention (c2p + p2c, 256 log buckets over 512 positions, shared keys, a
# LayerNorm'd relative table, no absolute positions) and its 128,100-token vocabulary.
DEBERTA_SIZES = {
    "deberta-v3-mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "deberta-v3-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def peak_rss_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def stat(v):
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def measure(warmup, reps, f):
    for _ in range(warmup):
        f()
    times, phases = [], []
    for _ in range(max(reps, 1)):
        sync()
        t0 = time.perf_counter()
        p = f()
        sync()
        times.append(time.perf_counter() - t0)
        phases.append(p)
    return times, phases


def encoder_flops(cfg, b, t):
    c, f, l = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    if cfg.model_type == "modernbert":
        f = 1.5 * f  # GeGLU: Wi is C x 2F, Wo F x C (6CF per token, BERT's 4CF with F' = 1.5F)
    return b * t * l * (8 * c * c + 4 * c * f + 4 * t * c)


def word_embeddings(cls):
    """The word-embedding layer a LayerIntegratedGradients attributes to."""
    if hasattr(cls, "model"):
        return cls.model.embeddings.tok_embeddings  # ModernBERT
    if hasattr(cls, "deberta"):
        return cls.deberta.embeddings.word_embeddings
    return cls.bert.embeddings.word_embeddings


def make_row(size, work, unit, per_rep, times, flops, phases=None):
    secs = stat(times)
    row = {
        "size": size,
        "workload": work,
        "unit": unit,
        "throughput": stat([per_rep / s for s in times]),
        "seconds": secs,
        "gflops": flops / secs["median"] / 1e9,
        "peak_rss_mb": peak_rss_mb(),
    }
    if phases is not None:
        order = sorted(range(len(times)), key=lambda i: times[i])
        row["phases"] = phases[order[len(order) // 2]]
    return row


def minilm_dir(args):
    if args.minilm:
        return args.minilm
    home = os.environ.get("PRISM_HOME") or os.path.expanduser("~/.cache/prism")
    return os.path.join(home, "models", "minilm")


def build(size, args, seq):
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    if size in MODERNBERT_SIZES:
        from transformers import ModernBertConfig, ModernBertForSequenceClassification
        cfg = ModernBertConfig(max_position_embeddings=max(512, seq), num_labels=2, local_attention=128,
                               global_attn_every_n_layers=3, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                               cls_token_id=2, sep_token_id=3, **MODERNBERT_SIZES[size])
        torch.manual_seed(0)
        return cfg, ModernBertForSequenceClassification(cfg).to(DEV), None
    if size in DEBERTA_SIZES:
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification
        cfg = DebertaV2Config(vocab_size=128100, max_position_embeddings=max(512, seq), num_labels=2,
                              relative_attention=True, position_buckets=256, max_relative_positions=-1,
                              pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                              position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
                              hidden_act="gelu", pad_token_id=0, **DEBERTA_SIZES[size])
        torch.manual_seed(0)
        return cfg, DebertaV2ForSequenceClassification(cfg).to(DEV), None
    if size == "minilm":
        d = minilm_dir(args)
        cls = BertForSequenceClassification.from_pretrained(d, num_labels=2)
        mlm = BertForMaskedLM.from_pretrained(d)
        return cls.config, cls.to(DEV), mlm.to(DEV)
    cfg = BertConfig(max_position_embeddings=max(512, seq), num_labels=2, **SIZES[size])
    torch.manual_seed(0)
    return cfg, BertForSequenceClassification(cfg).to(DEV), BertForMaskedLM(cfg).to(DEV)


def adamw(model, lr):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if n.endswith(".bias") or "LayerNorm" in n else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def training_step(model, opt, loss_fn):
    """One optimiser step as prism bench times it: forward (loss read back), backward, clip + AdamW."""
    sync()
    t0 = time.perf_counter()
    loss = loss_fn()
    loss.item()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": time.perf_counter() - t2}


def random_ids(g, b, t, vocab):
    ids = torch.randint(5, vocab, (b, t), generator=g)
    ids[:, 0] = max(2, min(101, vocab - 1))
    ids[:, -1] = max(3, min(102, vocab - 1))
    return ids.to(DEV)


def masked_batch(g, b, t, vocab):
    """Random ids with 15% of the inner positions (not the first or last) chosen for masking:
    (ids, the chosen mask, their flat positions, the original tokens there)."""
    ids = random_ids(g, b, t, vocab)
    inner = torch.rand((b, t), generator=g) < 0.15
    inner[:, 0] = inner[:, -1] = False
    inner = inner.to(DEV)
    positions = inner.flatten().nonzero().squeeze(1)
    return ids, inner, positions, ids.flatten()[positions].clone()


def bench_size(size, args, rows):
    b, t = args.batch, args.seq
    cfg, cls, mlm = build(size, args, t)
    v, c = cfg.vocab_size, cfg.hidden_size
    g = torch.Generator().manual_seed(7)
    fwd = encoder_flops(cfg, b, t)
    for work in args.workloads:
        reset_peak_rss()
        if work == "infer":
            cls.eval()
            ids = random_ids(g, b, t, v)
            mask = torch.ones_like(ids)

            def f():
                with torch.no_grad():
                    cls(input_ids=ids, attention_mask=mask).logits.tolist()
                return None

            times, _ = measure(args.warmup, args.reps, f)
            row = make_row(size, work, "seq/s", b, times, fwd + 2 * c * c * b)
        elif work == "infer-bf16":
            cls.eval()
            ids = random_ids(g, b, t, v)
            mask = torch.ones_like(ids)

            def f():
                with torch.no_grad(), torch.autocast(DEV.type, dtype=torch.bfloat16):
                    cls(input_ids=ids, attention_mask=mask).logits.float().tolist()
                return None

            times, _ = measure(args.warmup, args.reps, f)
            row = make_row(size, work, "seq/s", b, times, fwd + 2 * c * c * b)
        elif work in ("train", "train-bf16"):
            import contextlib

            amp = (torch.autocast(DEV.type, dtype=torch.bfloat16) if work == "train-bf16"
                   else contextlib.nullcontext())
            cls.train()
            if args.gradient_checkpointing:
                cls.gradient_checkpointing_enable()
            opt = adamw(cls, 1e-5)
            ids = random_ids(g, b, t, v)
            mask = torch.ones_like(ids)
            labels = torch.randint(0, 2, (b,), generator=g).to(DEV)

            def loss():
                with amp:
                    return torch.nn.functional.cross_entropy(
                        cls(input_ids=ids, attention_mask=mask).logits.float(), labels)

            def f():
                return training_step(cls, opt, loss)

            times, phases = measure(args.warmup, args.reps, f)
            row = make_row(size, work, "seq/s", b, times, 3 * (fwd + 2 * c * c * b), phases)
        elif work in ("ig", "ig-bf16"):
            from captum.attr import LayerIntegratedGradients
            import contextlib

            cls.eval()
            ids = random_ids(g, 1, t, v)
            base = torch.full_like(ids, cfg.pad_token_id or 0)
            base[:, 0], base[:, -1] = ids[:, 0], ids[:, -1]
            mask = torch.ones_like(ids)

            def forward(x, m):
                return torch.softmax(cls(input_ids=x, attention_mask=m.expand(x.shape[0], -1)).logits, -1)

            lig = LayerIntegratedGradients(forward, word_embeddings(cls))

            amp = (torch.autocast(DEV.type, dtype=torch.bfloat16) if work == "ig-bf16"
                   else contextlib.nullcontext())

            def f():
                with amp:
                    a, d = lig.attribute(ids, baselines=base, additional_forward_args=(mask,), target=1,
                                         n_steps=args.ig_steps, method="gausslegendre", internal_batch_size=b,
                                         return_convergence_delta=True)
                a.float().sum(-1).tolist()
                return None

            times, _ = measure(args.warmup, args.reps, f)
            one = encoder_flops(cfg, 1, t) + 2 * c * c
            row = make_row(size, work, "ex/s", 1, times, one * (3 * args.ig_steps + 2))
        elif work in ("gradient-shap", "conductance", "conductance-map"):
            # Captum on the word embeddings as inputs (what prism attributes): GradientShap with
            # the [PAD] and [MASK] baselines and 20 samples in one pass; LayerConductance of the
            # last layer, or of every layer (one call per layer: a Captum user's layer map).
            from captum.attr import GradientShap, LayerConductance

            cls.eval()
            ids = random_ids(g, 1, t, v)
            mask = torch.ones_like(ids)
            emb = word_embeddings(cls)
            pad = torch.full_like(ids, cfg.pad_token_id or 0)
            pad[:, 0], pad[:, -1] = ids[:, 0], ids[:, -1]
            msk = torch.full_like(ids, min(103, v - 1))
            msk[:, 0], msk[:, -1] = ids[:, 0], ids[:, -1]
            with torch.no_grad():
                e, b_pad, b_mask = emb(ids), emb(pad), emb(msk)

            def fe(x):
                return torch.softmax(cls(inputs_embeds=x, attention_mask=mask.expand(x.shape[0], -1)).logits, -1)

            if work == "gradient-shap":
                gs = GradientShap(fe)

                def f():
                    gs.attribute(e, baselines=torch.cat([b_pad, b_mask]), n_samples=20, stdevs=0.0,
                                 target=1).sum(-1).tolist()
                    return None

                flops_n = 3 * 20 + 3
            else:
                layers = list(cls.model.layers if hasattr(cls, "model") else cls.bert.encoder.layer)
                chosen = layers[-1:] if work == "conductance" else layers

                def f():
                    for layer in chosen:
                        LayerConductance(fe, layer).attribute(
                            e, baselines=b_pad, target=1, n_steps=args.ig_steps, method="gausslegendre",
                            internal_batch_size=b).sum(-1).tolist()
                    return None

                flops_n = 3 * (args.ig_steps + 1) + 2
            times, _ = measure(args.warmup, args.reps, f)
            one = encoder_flops(cfg, 1, t) + 2 * c * c
            row = make_row(size, work, "ex/s", 1, times, one * flops_n)
        elif work in ("mlm", "mlm-bf16") and mlm is None:
            print(f"{size}: no masked-LM row (the MLM bench is BERT-shaped, in prism bench too)", file=sys.stderr)
            continue
        elif work in ("mlm", "mlm-bf16"):
            import contextlib

            amp = (torch.autocast(DEV.type, dtype=torch.bfloat16) if work == "mlm-bf16"
                   else contextlib.nullcontext())
            mlm.train()
            if args.gradient_checkpointing:
                mlm.gradient_checkpointing_enable()
            opt = adamw(mlm, 1e-4)
            ids, inner, positions, labels = masked_batch(g, b, t, v)
            ids = ids.masked_fill(inner, 103 if v > 103 else 4)
            mask = torch.ones_like(ids)

            def mlm_loss():
                with amp:
                    h = mlm.bert(input_ids=ids, attention_mask=mask).last_hidden_state
                    logits = mlm.cls(h.reshape(b * t, c)[positions])
                    return torch.nn.functional.cross_entropy(logits.float(), labels)

            def f():
                return training_step(mlm, opt, mlm_loss)

            times, phases = measure(args.warmup, args.reps, f)
            head = len(positions) * (2 * c * c + 2 * c * v)
            row = make_row(size, work, "tok/s", b * t, times, 3 * (fwd + head), phases)
        elif work == "rtd" and mlm is None:
            print(f"{size}: no rtd row (the RTD bench is BERT-shaped, in prism bench too)", file=sys.stderr)
            continue
        elif work == "rtd":
            from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

            heads, inter, layers = cfg.num_attention_heads, cfg.intermediate_size, cfg.num_hidden_layers
            head_dim = c // heads
            gh = max(1, int(c * 0.25 / head_dim + 0.5))  # as Rust rounds: halves away from zero
            gc = gh * head_dim
            common = dict(vocab_size=v, embedding_size=c, num_hidden_layers=layers,
                          max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
                          hidden_act=cfg.hidden_act, layer_norm_eps=cfg.layer_norm_eps, pad_token_id=0)
            torch.manual_seed(0)
            disc = ElectraForPreTraining(ElectraConfig(hidden_size=c, num_attention_heads=heads,
                                                       intermediate_size=inter, **common)).to(DEV)
            gen = ElectraForMaskedLM(ElectraConfig(hidden_size=gc, num_attention_heads=gh,
                                                   intermediate_size=int(inter * gc / c + 0.5), **common)).to(DEV)
            gen.electra.embeddings = disc.electra.embeddings  # ELECTRA's shared embeddings
            gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
            both = torch.nn.ModuleDict({"discriminator": disc, "generator": gen})
            both.train()
            opt = adamw(both, 1e-4)
            ids, inner, positions, labels = masked_batch(g, b, t, v)
            masked = ids.masked_fill(inner, 103 if v > 103 else 4)
            mask = torch.ones_like(ids)

            def rtd_loss():
                h = gen.electra(input_ids=masked, attention_mask=mask).last_hidden_state
                logits = gen.generator_lm_head(gen.generator_predictions(h.reshape(b * t, gc)[positions]))
                mlm_loss = torch.nn.functional.cross_entropy(logits, labels)
                with torch.no_grad():
                    sampled = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(1)
                    d_ids = ids.flatten().clone()
                    d_ids[positions] = sampled
                    d_ids = d_ids.view(b, t)
                    replaced = (d_ids != ids).float()
                d_logits = disc(input_ids=d_ids, attention_mask=mask).logits
                rtd = torch.nn.functional.binary_cross_entropy_with_logits(d_logits, replaced)
                return mlm_loss + 50.0 * rtd

            def f():
                return training_step(both, opt, rtd_loss)

            times, phases = measure(args.warmup, args.reps, f)
            gcfg = ElectraConfig(hidden_size=gc, intermediate_size=int(inter * gc / c + 0.5), **common)
            gen_flops = encoder_flops(gcfg, b, t) + len(positions) * (2 * gc * c + 2 * c * v)
            disc_flops = fwd + b * t * (2 * c * c + 2 * c)
            row = make_row(size, work, "tok/s", b * t, times, 3 * (gen_flops + disc_flops), phases)
        else:
            sys.exit(f"unknown workload {work}")
        print_row(row)
        rows.append(row)


def print_row(r):
    ph = r.get("phases")
    ph = "" if not ph else "%.0f/%.0f/%.0f" % (ph["forward"] * 1e3, ph["backward"] * 1e3, ph["optimizer"] * 1e3)
    tp = r["throughput"]
    print(f"{r['size']:<7} {r['workload']:<6} {tp['median']:>12.2f} {r['unit']:>10} {tp['min']:>10.2f} {tp['max']:>10.2f} "
          f"{r['gflops']:>8.1f} {r['peak_rss_mb']:>9.0f}  {ph}", file=sys.stderr)


def sgemm(n):
    a, b = torch.randn(n, n, device=DEV), torch.randn(n, n, device=DEV)
    a @ b
    times = []
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    s = min(times)
    return {"n": n, "seconds": s, "gflops": 2 * n ** 3 / s / 1e9}


def run_torch(args):
    global DEV
    DEV = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"PyTorch {torch.__version__} eager on {DEV}: batch {args.batch} x {args.seq}, {torch.get_num_threads()} threads, "
          f"{args.warmup} warm-up + {args.reps} repetitions", file=sys.stderr)
    sg = sgemm(args.sgemm)
    print(f"sgemm {sg['n']}^3: {sg['gflops']:.1f} GFLOP/s", file=sys.stderr)
    rows = []
    for size in args.sizes:
        bench_size(size, args, rows)
    return {"torch": torch.__version__, "device": str(DEV), "threads": args.threads, "batch": args.batch, "seq": args.seq,
            "gradient_checkpointing": args.gradient_checkpointing,
            "reps": args.reps, "ig_steps": args.ig_steps, "sgemm": sg, "results": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,mini,minilm,base")
    ap.add_argument("--workloads", default="infer,infer-bf16,train,train-bf16,ig,ig-bf16,mlm,mlm-bf16")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--ig-steps", type=int, default=50)
    ap.add_argument("--sgemm", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="run both sides here (prism needs the CUDA build: scripts/build-cuda.sh)")
    ap.add_argument("--minilm", help="MiniLM folder (default: $PRISM_HOME/models/minilm)")
    ap.add_argument("--json", help="write the JSON report here")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="activation checkpointing in the training workloads (gradient_checkpointing_enable())")
    ap.add_argument("--compare", action="store_true", help="run `prism bench` first and print the ratios")
    ap.add_argument("--prism", default="target/release/prism", help="the prism binary for --compare")
    args = ap.parse_args()
    args.sizes = args.sizes.split(",")
    args.workloads = args.workloads.split(",")

    prism = None
    if args.compare:
        if "minilm" in args.sizes and not args.minilm:
            args.minilm = subprocess.run([args.prism, "fetch", "model", "minilm"], check=True,
                                         capture_output=True, text=True).stdout.strip()
        cmd = [args.prism, "bench", "--json", "-", "--sizes", ",".join(args.sizes), "--workloads",
               ",".join(args.workloads), "--batch", str(args.batch), "--seq", str(args.seq), "--reps", str(args.reps),
               "--warmup", str(args.warmup), "--ig-steps", str(args.ig_steps), "--sgemm", str(args.sgemm),
               "--threads", str(args.threads), "--device", args.device]
        if args.gradient_checkpointing:
            cmd.append("--gradient-checkpointing")
        print("$ " + " ".join(cmd), file=sys.stderr)
        prism = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)
    ref = run_torch(args)
    out = {"pytorch": ref}
    if prism is not None:
        out["prism"] = prism
        key = lambda r: (r["size"], r["workload"])
        theirs = {key(r): r for r in ref["results"]}
        print(f"\n{'size':<7} {'work':<6} {'unit':>6} {'prism':>10} {'PyTorch':>10} {'ratio':>7}   prism GFLOP/s (% of its sgemm)", file=sys.stderr)
        table = []
        for r in prism["results"]:
            t = theirs.get(key(r))
            if not t:
                continue
            ratio = r["throughput"]["median"] / t["throughput"]["median"]
            pct = 100 * r["gflops"] / prism["sgemm"]["gflops"]
            f32 = theirs.get((r["size"], F32_OF.get(r["workload"]))) if r["workload"] in F32_OF else None
            vs_f32 = r["throughput"]["median"] / f32["throughput"]["median"] if f32 else None
            extra = f"   vs PyTorch f32: {vs_f32:.2f}x" if vs_f32 else ""
            print(f"{r['size']:<7} {r['workload']:<6} {r['unit']:>6} {r['throughput']['median']:>10.2f} "
                  f"{t['throughput']['median']:>10.2f} {ratio:>6.2f}x   {r['gflops']:.1f} ({pct:.0f}%){extra}",
                  file=sys.stderr)
            entry = {"size": r["size"], "workload": r["workload"], "unit": r["unit"],
                     "prism": r["throughput"]["median"], "pytorch": t["throughput"]["median"], "ratio": ratio}
            if vs_f32:
                entry["ratio_vs_pytorch_f32"] = vs_f32
            table.append(entry)
        print(f"sgemm {prism['sgemm']['n']}^3 GFLOP/s: prism {prism['sgemm']['gflops']:.1f}, PyTorch {ref['sgemm']['gflops']:.1f}",
              file=sys.stderr)
        out["ratios"] = table
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
