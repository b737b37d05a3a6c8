"""transformers side of the MLM plateau check: BertForMaskedLM with plateau.toml's sizes, the
tokenizer prism trained, the same packing (64-token [CLS] ... [SEP] windows), 15% masking
(DataCollatorForLanguageModeling), AdamW lr 1e-3 with linear warm-up/decay, clipping 1.0; prints
held-out loss, perplexity and masked-token accuracy every 100 updates.
    python hf_reference.py runs/plateau/tokenizer/tokenizer.json [STEPS]"""
import glob, torch, random, math, sys
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast, DataCollatorForLanguageModeling
torch.set_num_threads(2); torch.manual_seed(0); random.seed(0)
tok = PreTrainedTokenizerFast(tokenizer_file=sys.argv[1], unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
def pack(files, T=64):
    ids=[]
    for f in files:
        ids += tok(open(f).read().replace("\n"," "), add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    out=[]
    for i in range(0, len(ids)-(T-2), T-2):
        out.append([tok.cls_token_id]+ids[i:i+T-2]+[tok.sep_token_id])
    return out
tr = pack(sorted(glob.glob("corpus/train/*.txt"))); dv = pack(sorted(glob.glob("corpus/dev/*.txt")))[:64]
cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, max_position_embeddings=512)
m = BertForMaskedLM(cfg)
col = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
steps=int(sys.argv[2]) if len(sys.argv)>2 else 400
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s+1)/20, max(0.0,(steps-s)/(steps-20))))
g = torch.Generator().manual_seed(1)
dvb = col([{"input_ids": x} for x in dv])
for s in range(steps):
    batch = col([{"input_ids": random.choice(tr)} for _ in range(16)])
    m.train(); loss = m(**batch).loss; loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad()
    if (s+1)%100==0:
        m.eval()
        with torch.no_grad():
            out = m(**dvb); l = out.loss.item()
            lab = dvb["labels"]; sel = lab!=-100
            acc = (out.logits.argmax(-1)[sel]==lab[sel]).float().mean().item()
        print(s+1, "dev loss %.3f ppl %.1f acc %.3f"%(l, math.exp(l), acc), flush=True)
