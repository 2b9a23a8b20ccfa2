"""Load a built model directory the way a user without scaffold would, and check it end to end.

Run as a script in a fresh process: ``python loadcheck.py MODEL_DIR WORK_DIR``. scaffold is made
unimportable first, so the directory must stand on torch and transformers alone. Prints one JSON
line of facts; exits non-zero on the first failed check.
"""

import json
import sys

sys.modules["scaffold"] = None  # any `import scaffold` in the model directory now fails

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def main(model_dir: str, work_dir: str) -> None:
    facts = {}
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    facts["tokenizer_len"] = len(tok)
    facts["chat"] = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True).eval()
    facts["class"] = type(model).__name__
    facts["tied"] = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(work_dir)
    loaded = AutoModelForCausalLM.from_pretrained(work_dir, trust_remote_code=True).eval()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for k in a:
        assert torch.equal(a[k], b[k]), f"parameter {k} differs after from_pretrained"
    for (k, x), (_, y) in zip(model.named_buffers(), loaded.named_buffers()):
        assert torch.equal(x, y), f"buffer {k} differs after from_pretrained"
    facts["loaded_tied"] = loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits), "logits differ after from_pretrained"
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    with_cache = loaded.generate(ids, use_cache=True, **kw)
    without = loaded.generate(ids, use_cache=False, **kw)
    assert torch.equal(with_cache, without), f"cache {with_cache.tolist()} != no cache {without.tolist()}"
    facts["generated"] = with_cache.shape[1] - ids.shape[1]
    print(json.dumps(facts))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
