#!/usr/bin/env python3
"""The PyTorch/Captum reference for `cargo bench -p prism-explain --bench ig`: the same MiniLM
checkpoint with a 2-class head, Captum's LayerIntegratedGradients on the word embeddings, 50
Gauss-Legendre steps, internal batch 16 and 50, the same eight sentences, the same thread count.

    pip install torch transformers captum
    python bench/ig_reference.py [--threads 2] [--model ~/.cache/prism/models/minilm]
"""
import argparse
import json
import os
import statistics
import time

import torch
from captum.attr import LayerIntegratedGradients
from transformers import AutoTokenizer, BertForSequenceClassification

SENTENCES = [
    "A gorgeous, witty, seductive movie.",
    "The acting was wooden and the plot made no sense at all.",
    "It is a film that rewards patience with genuine emotion, even if the middle act drags.",
    "I would not watch this again, even for free.",
    "The soundtrack is lovely but the dialogue is clumsy and the pacing uneven.",
    "An unexpected delight from start to finish!",
    "Nobody in the theatre laughed at the jokes, and several people left early.",
    "The director's vision is clear, bold and beautifully shot.",
]

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--model", default=os.path.expanduser("~/.cache/prism/models/minilm"))
args = ap.parse_args()
torch.set_num_threads(args.threads)
tok = AutoTokenizer.from_pretrained(args.model)
model = BertForSequenceClassification.from_pretrained(args.model, num_labels=2, attn_implementation="eager").eval()
results = []
for batch in (16, 50):
    def run():
        t0 = time.perf_counter()
        for s in SENTENCES:
            enc = tok(s, return_tensors="pt")
            ids = enc["input_ids"]
            special = torch.tensor(tok.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True)).bool()
            base = torch.where(special, ids[0], torch.full_like(ids[0], tok.pad_token_id)).unsqueeze(0)

            def f(x):
                n = x.shape[0]
                return torch.softmax(model(input_ids=x, attention_mask=enc["attention_mask"].expand(n, -1),
                                           token_type_ids=enc["token_type_ids"].expand(n, -1)).logits, -1)

            LayerIntegratedGradients(f, model.bert.embeddings.word_embeddings).attribute(
                ids, baselines=base, target=1, n_steps=50, method="gausslegendre", internal_batch_size=batch)
        return time.perf_counter() - t0
    run()
    times = sorted(run() for _ in range(3))
    eps = len(SENTENCES) / times[1]
    print(f"Captum IG 50 steps, internal batch {batch:>2}: {eps:.2f} examples/s (median of 3; {args.threads} threads)")
    results.append({"bench": "ig50_minilm_captum", "internal_batch": batch, "examples_per_s": eps, "seconds": times})
print(json.dumps(results))
