"""The pure-Python tokenizer must give exactly the ids (and decode output) of HF `tokenizers`.

Compared on a large generated corpus (fixed edge cases + seeded random strings from many
Unicode blocks), with the default model's tokenizer.json and with several tokenizer.json
files trained here with `tokenizers` itself (Llama-3 / DeepSeek style Split regexes, Digits,
NFC, Metaspace + byte fallback, WordPiece-style prefixes, added tokens with
lstrip/rstrip/single_word/normalized).
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from realm_web.tokenizer import _BYTES_CHAR, Tokenizer, _compile_onig, _split, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Regex, decoders, models, normalizers  # noqa: E402
from tokenizers import pre_tokenizers, processors, trainers  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- corpus

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]

FIXED = [
    "", " ", "  ", "\n", "\n\n", "\r\n", "\r\n\r\n", "\t", " \t \n ", "a", "Hello world",
    "Hello, world! How's it going? I'm fine, you'll see; they've, we'd, she's.",
    "IT'S I'M WE'LL THEY'VE HE'D 'S 'T 'Re ’s 'ſ 'K",
    "x" * 300, " " * 300, "\n" * 40 + "x", "ab" * 200, "🤗" * 50,
    "0 1 12 123 1234 12345 123456 3.14159 1,000,000 0x1F 1e-9 ٣٤٥ ०१२ 一二三 ½ ² Ⅻ",
    "def f(x):\n    return x**2  # square\n\n\tif x != 0:\n\t\tpass\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * c; } // done\n",
    "<html><body class=\"main\">Hi &amp; bye</body></html>",
    "SELECT * FROM t WHERE a='b' AND c<>\"d\";",
    "emoji 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 1️⃣ 🇫🇷 🫠",
    "日本語のテキストです。東京タワー！",
    "中文文本，包括标点符号。漢字",
    "한국어 텍스트입니다. ㄱㄴㄷ",
    "مرحبا بالعالم! هذا نص عربي مع تشكيل: مَرْحَبًا",
    "שלום עולם, זה טקסט בעברית",
    "Привет, мир! Ёжик в тумане.",
    "Γειά σου Κόσμε! ΣΊΣΥΦΟΣ σίσυφος",
    "हिन्दी पाठ, संख्या १२३",
    "ภาษาไทยไม่มีช่องว่าง",
    "Tiếng Việt có dấu: Đường phố",
    "e\u0301 n\u0303 a\u0308\u0304 \u0301\u0301 Z\u0351\u0352\u0353\u0354",
    "café naïve résumé Ångström ﬁ ﬂ ㎏ Ⅻ ①",
    "a\x1c\x1d\x1e\x1fb \x85c\u2028d\u2029e\u00a0f\u1680g\u2000\u200a\u202f\u205f\u3000h",
    "zero\u200bwidth\u200cjoin\u200dbom\ufeffsoft\u00adhyphen",
    "tab\tsep\x0bvt\x0cff\x00nul\x07bel\x1besc\x7fdel",
    "private \ue000\uf8ff \U000f0000 new16 \U00010d4a\u1c89\U00016d40 new17 \U00010940",
    "math 𝐀𝐁𝐂 𝟏𝟐𝟑 ℝ ∀x∈ℕ: x²≥0 ∑∫√∞ ≠ ≤ ≥",
    "fullwidth ＡＢＣ１２３！？",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|endoftext|>",
    " <|im_start|> user <|im_end|> ",
    "<|im_start<|im_end|>|>", "<|im_", "text<|endoftext|>more text",
    "lstrip   [MASK]   rstrip <sep>   next",
    "hello hellos shello hello. hello_world", "wOrLd world WORLD",
    "'s's's 's 's", "   leading and trailing   ", "multiple    spaces\t\t\ttabs",
    "newline\n\n\nparagraphs\r\n\r\nwindows\rmac",
    "a\u0300" * 30, "ﷺ ﷽", "𒀀𒀁", "\U0001f600" * 3 + " \U0001f680",
    "long_identifier_name_with_underscores = someFunctionCall(argumentOne, argTwo)",
    "https://example.com/path?query=1&x=y#frag mail@example.org",
    "1234567890" * 10, "$100.00 €50 £30 ¥1000 ₹500",
]

BLOCKS: list[tuple[int, int]] = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0x30, 0x39), (0x00, 0x1F), (0x7F, 0xA0),
    (0xA0, 0xFF), (0x100, 0x17F), (0x180, 0x24F), (0x250, 0x2FF), (0x300, 0x36F),
    (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF),
    (0x700, 0x74F), (0x900, 0x97F), (0x980, 0x9FF), (0xE00, 0xE7F), (0x10A0, 0x10FF),
    (0x1100, 0x11FF), (0x1680, 0x16FF), (0x1AB0, 0x1AFF), (0x1E00, 0x1EFF),
    (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20CF), (0x2100, 0x214F),
    (0x2150, 0x218F), (0x2190, 0x23FF), (0x2460, 0x24FF), (0x2500, 0x27BF),
    (0x2E80, 0x2FDF), (0x3000, 0x303F), (0x3040, 0x30FF), (0x3130, 0x318F),
    (0x31F0, 0x33FF), (0x4E00, 0x9FFF), (0xA000, 0xA4CF), (0xA640, 0xA6FF),
    (0xAC00, 0xD7A3), (0xE000, 0xE0FF), (0xF900, 0xFAFF), (0xFB00, 0xFDFF),
    (0xFE00, 0xFE6F), (0xFF00, 0xFFEF), (0xFFF0, 0xFFFF), (0x10000, 0x1034F),
    (0x10D40, 0x10D8F), (0x11000, 0x1107F), (0x16D40, 0x16D7F), (0x1D400, 0x1D7FF),
    (0x1E900, 0x1E95F), (0x1F000, 0x1F0FF), (0x1F100, 0x1F1FF), (0x1F300, 0x1FAFF),
    (0x20000, 0x2A6DF), (0x2EBF0, 0x2EE5F), (0x30000, 0x3134F), (0xE0000, 0xE007F),
    (0xF0000, 0xF00FF), (0x10FFF0, 0x10FFFF),
]
SPACES = [" ", " ", " ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "\x1c", "\x1f",
          "\x85", "\u2028", "\u2009", "\u200b", " \n ", "\n\n", "   \n"]
WORDS = ["the", "The", "hello", "world", "'s", "'ll", "'T", "I", "a", "42", "2024",
         "3.14", "don't", "we're", "ß", "İstanbul", "ΣΑΣ", "naïve", "e\u0301", "中文",
         "日本", "한국", "🤗", "😀👍", "..."]


def _rand_text(rng: random.Random, specials: list[str]) -> str:
    parts: list[str] = []
    for _ in range(rng.randint(0, 14)):
        r = rng.random()
        if r < 0.35:
            lo, hi = rng.choice(BLOCKS)
            parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6))))
        elif r < 0.6:
            parts.append(rng.choice(SPACES))
        elif r < 0.85:
            parts.append(rng.choice(WORDS))
        elif r < 0.93 and specials:
            parts.append(rng.choice(specials))
        else:
            parts.append(rng.choice(["'", "'s", "’", "-", "_", ".", ",", "!?", "/*", "\\", "'S"]))
    return "".join(parts)


def corpus(specials: list[str], n_random: int = 1500, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    texts = list(FIXED)
    texts += [_rand_text(rng, specials) for _ in range(n_random)]
    # dense random unicode strings (no structure)
    for _ in range(150):
        lo, hi = rng.choice(BLOCKS)
        texts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 40))))
    return texts


def _check_same(ours: Tokenizer, ref: Any, texts: list[str], decode: bool = True) -> None:
    bad: list[str] = []
    for t in texts:
        want = ref.encode(t, add_special_tokens=False).ids
        got = ours.encode(t)
        if got != want:
            bad.append(f"encode {t!r}: ours={got} ref={want}")
            continue
        want_s = ref.encode(t, add_special_tokens=True).ids
        got_s = ours.encode(t, add_special_tokens=True)
        if got_s != want_s:
            bad.append(f"encode+special {t!r}: ours={got_s} ref={want_s}")
        if decode:
            for skip in (False, True):
                a = ours.decode(got, skip_special_tokens=skip)
                b = ref.decode(want, skip_special_tokens=skip)
                if a != b:
                    bad.append(f"decode(skip={skip}) {t!r}: ours={a!r} ref={b!r}")
    assert not bad, f"{len(bad)} mismatches, first:\n" + "\n".join(bad[:10])


# ----------------------------------------------------------------------------- default model


@pytest.fixture(scope="session")
def tok_path(model_dir: Path) -> Path:
    p = Path(model_dir) / "tokenizer.json"
    if not p.exists():
        pytest.skip(f"no tokenizer.json in {model_dir}")
    return p


@pytest.fixture(scope="session")
def ours(tok_path: Path) -> Tokenizer:
    return load_tokenizer(tok_path.parent)


@pytest.fixture(scope="session")
def ref(tok_path: Path) -> Any:
    return HFTokenizer.from_file(str(tok_path))


def test_default_model_corpus(ours: Tokenizer, ref: Any) -> None:
    specials = [t.content for t in ref.get_added_tokens_decoder().values()] or SPECIALS
    _check_same(ours, ref, corpus(specials))


def test_default_model_vocab_api(ours: Tokenizer, ref: Any) -> None:
    assert ours.vocab_size == ref.get_vocab_size(with_added_tokens=True)
    vocab = ref.get_vocab(with_added_tokens=True)
    for tok, tid in list(vocab.items())[:3000]:
        assert ours.token_to_id(tok) == tid
        assert ours.id_to_token(tid) == ref.id_to_token(tid)
    assert ours.token_to_id("\x00definitely-not-a-token") is None
    assert ours.id_to_token(10**9) is None
    specials = {i for i, t in ref.get_added_tokens_decoder().items() if t.special}
    assert ours.special_ids == frozenset(specials)


def test_default_model_roundtrip_and_token_bytes(ours: Tokenizer, ref: Any) -> None:
    # Bytes that have a single-byte token: a model may lack a few (SmolLM2 has no token for
    # 0x1d; tokenizers then drops that byte, and so do we), otherwise BPE is lossless.
    known = {b for b, ch in _BYTES_CHAR.items() if ours.token_to_id(ch) is not None}
    for t in corpus([], n_random=400, seed=7):
        ids = ours.encode(t)
        raw = b"".join(ours.token_bytes(i) for i in ids)
        assert raw.decode("utf-8", "replace") == ours.decode(ids)
        if set(t.encode("utf-8")) <= known:
            assert ours.decode(ids) == t
            assert raw == t.encode("utf-8")
    with pytest.raises(KeyError):
        ours.token_bytes(10**9)


def test_default_model_random_ids_decode(ours: Tokenizer, ref: Any) -> None:
    """Arbitrary id sequences (broken UTF-8 included) decode exactly like tokenizers."""
    rng = random.Random(99)
    n = ref.get_vocab_size(with_added_tokens=True)
    added = set(ref.get_added_tokens_decoder())
    for _ in range(600):
        ids = [rng.randrange(n) for _ in range(rng.randint(0, 12))]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip), ids
        plain = [i for i in ids if i not in added]
        raw = b"".join(ours.token_bytes(i) for i in plain)
        assert raw.decode("utf-8", "replace") == ours.decode(plain)


def test_default_model_long_inputs(ours: Tokenizer, ref: Any) -> None:
    rng = random.Random(5)
    texts = ["".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(3000)),  # one huge word
             "a" * 5000, " " * 5000 + "b", "\n" * 3000, "1" * 4000, "🤗" * 1500,
             "".join(chr(rng.randint(0x20, 0x7E)) for _ in range(20000))]
    _check_same(ours, ref, texts, decode=False)


def test_encode_speed(ours: Tokenizer) -> None:
    chat = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
            "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n")
    ours.encode(chat)
    t0 = time.perf_counter()
    for _ in range(200):
        ours.encode(chat)
    per_call = (time.perf_counter() - t0) / 200
    assert per_call < 1e-3, f"chat prompt encode took {per_call * 1e3:.3f} ms"


# ----------------------------------------------------------------------------- regex translation

PATTERNS = [
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"[一-龥\u3040-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"\p{N}{1,3}", r"\s+", r"\S+", r"\w+|[^\w\s]+", r"\d+", r"\D+", r"\h+", r"\W",
    r"[[:alpha:]]+", r"[[:punct:]]+", r"[[:upper:]][[:lower:]]*", r"[[:^space:]]+",
    r"[a-z&&[^aeiou]]+", r"[\p{L}&&\p{^Lu}]+", r"\p{^L}+", r"\P{N}+", r"[^\P{L}]+",
    r"\p{Lu}\p{Ll}+|\p{Lo}+|\p{M}+|\p{Nd}|\p{No}|\p{Sc}|\p{Pd}|\p{Zs}",
    r"\p{Letter}+|\p{Decimal_Number}+|\p{punct}", r"\p{Alpha}+|\p{Word}",
    r"\b", r"\B", r"(?=a)", r"a*", r"x?", r"", r"^", r"$", r"^\s*|\s*$", r"(?m).",
    r".", r"\A.|.\z", r"\Z", r"\x41|\x{4E2D}|\u00e9|\101|\0", r"a++b|a*+|\s?+\S",
    r"a{2}+", r"(?<=\s)\S+", r"(?<!\p{L})\p{N}+", r"(?<=a|bc)x", r"(?>a+)b",
    r"(?i)hello|world", r"ab(?i)c|def", r"(?<w>\p{L})\k<w>", r"(\p{L})\1",
    r"(?x) \p{L}+ # comment", r"[\s\S]{3}", r"[-a]|[a-]|[]]", r"\.\*\+\?\(\)\[\]\{\}\|\^\$",
    r"{", r"a{,2}", r"a{2,}?", r"(?:a|b)+?c",
]
BEHAVIORS = ["isolated", "removed", "merged_with_previous", "merged_with_next", "contiguous"]


def test_regex_split_matches_oniguruma() -> None:
    rng = random.Random(3)
    texts = corpus(SPECIALS, n_random=150, seed=11)
    texts += ["aab bc x abcx", "hello Hello HELLO hello", "aaaa aa b", "ééé"]
    bad: list[str] = []
    for pat in PATTERNS:
        rx = _compile_onig(pat)
        for behavior in BEHAVIORS:
            for invert in (False, True):
                if rng.random() < 0.5 and behavior != "isolated":
                    continue
                sp = pre_tokenizers.Split(Regex(pat), behavior, invert=invert)
                beh = "".join(w.capitalize() for w in behavior.split("_")).replace(
                    "Mergedwith", "MergedWith")
                beh = {"Isolated": "Isolated", "Removed": "Removed", "Contiguous": "Contiguous",
                       "MergedWithPrevious": "MergedWithPrevious",
                       "MergedWithNext": "MergedWithNext"}[beh]
                for t in texts:
                    want = [p for p, _ in sp.pre_tokenize_str(t)]
                    got = _split(t, rx, beh, invert)
                    if got != want:
                        bad.append(f"{pat!r} {behavior} inv={invert} {t!r}: {got} != {want}")
                        break
    assert not bad, f"{len(bad)} mismatches:\n" + "\n".join(bad[:10])


def test_regex_classes_over_all_code_points() -> None:
    """Every code point: our translated classes agree with Oniguruma's."""
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    text = "".join(chr(c) for c in cps)
    for pat in [r"\p{L}", r"\p{N}", r"\s", r"[^\s\p{L}\p{N}]", r"\p{M}", r"\w", r"\p{Lu}"]:
        sp = pre_tokenizers.Split(Regex("(?:" + pat + ")+"), "isolated")
        want = [p for p, _ in sp.pre_tokenize_str(text)]
        got = _split(text, _compile_onig("(?:" + pat + ")+"), "Isolated")
        assert got == want, pat


def test_unsupported_constructs_raise() -> None:
    for pat in [r"\p{Han}", r"\G", r"\K", r"(?<=a"]:
        with pytest.raises(ValueError):
            _compile_onig(pat)
    base = json.loads(_trained_json("llama3"))
    for bad in [{"type": "WordPiece", "vocab": {}}, {"type": "Unigram", "vocab": []}]:
        with pytest.raises(ValueError):
            Tokenizer.from_dict({**base, "model": bad})
    with pytest.raises(ValueError):
        Tokenizer.from_dict({**base, "normalizer": {"type": "Precompiled"}})


# ----------------------------------------------------------------------------- trained tokenizers

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
          r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK = [
    r"\p{N}{1,3}",
    r"[一-龥\u3040-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]
TRAIN_SPECIALS = ["<|bos|>", "<|eot|>", "<unk>"]


def _training_corpus() -> list[str]:
    rng = random.Random(42)
    lines = [t for t in FIXED if t] * 3
    lines += [_rand_text(rng, []) for _ in range(1500)]
    words = "the quick brown fox jumps over lazy dog hello world token izer café 東京 데이터".split()
    lines += [" ".join(rng.choice(words) for _ in range(12)) for _ in range(800)]
    return lines


def _add_tokens(tok: Any) -> None:
    tok.add_special_tokens([AddedToken("<|eot|>", special=True, normalized=False),
                            AddedToken("<|bos|>", special=True, normalized=False)])
    tok.add_tokens([
        AddedToken("[MASK]", lstrip=True, rstrip=False, normalized=False),
        AddedToken("<sep>", rstrip=True, normalized=False),
        AddedToken("<both>", lstrip=True, rstrip=True, normalized=False, special=True),
        AddedToken("hello", single_word=True, normalized=True),
        AddedToken("wOrLd", normalized=False),
        AddedToken("Café", normalized=True),
        AddedToken("brand_new_token", normalized=True),
    ])


def _trained_json(kind: str) -> str:
    if kind in _TRAINED:
        return _TRAINED[kind]
    if kind in ("llama3", "deepseek", "digits_nfc"):
        tok = HFTokenizer(models.BPE(ignore_merges=(kind == "llama3")))
        tok.decoder = decoders.ByteLevel()
        if kind == "llama3":
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(LLAMA3), "isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        elif kind == "deepseek":
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(p), "isolated") for p in DEEPSEEK]
                + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:
            tok.normalizer = normalizers.Sequence([normalizers.NFC()])
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
        trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=TRAIN_SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    elif kind == "metaspace_fallback":
        tok = HFTokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=TRAIN_SPECIALS,
                                      show_progress=False, limit_alphabet=150)
    elif kind == "metaspace_pretok":
        tok = HFTokenizer(models.BPE(unk_token="<unk>", fuse_unk=False))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=TRAIN_SPECIALS,
                                      show_progress=False, limit_alphabet=200)
    elif kind == "wordpiece_style":
        tok = HFTokenizer(models.BPE(unk_token="<unk>", continuing_subword_prefix="##",
                                     end_of_word_suffix="</w>"))
        tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(),
                                               normalizers.Lowercase(), normalizers.Strip()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                     pre_tokenizers.Punctuation()])
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=TRAIN_SPECIALS,
                                      continuing_subword_prefix="##", end_of_word_suffix="</w>",
                                      show_progress=False, limit_alphabet=300)
    else:
        raise KeyError(kind)
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    _add_tokens(tok)
    bos = tok.token_to_id("<|bos|>")
    eot = tok.token_to_id("<|eot|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A <|eot|>", pair="<|bos|> $A <|eot|> $B:1",
        special_tokens=[("<|bos|>", bos), ("<|eot|>", eot)])
    data = json.loads(tok.to_str())
    if kind == "metaspace_fallback":
        # byte fallback tokens live in the model vocab only (as in Llama 2)
        vocab = data["model"]["vocab"]
        nxt = max(max(vocab.values()), max(t["id"] for t in data["added_tokens"])) + 1
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = nxt + b
    _TRAINED[kind] = json.dumps(data)
    return _TRAINED[kind]


_TRAINED: dict[str, str] = {}
KINDS = ["llama3", "deepseek", "digits_nfc", "metaspace_fallback", "metaspace_pretok",
         "wordpiece_style"]
EXTRA = ["<|eot|>", "<|bos|>", "[MASK]", "<sep>", "<both>", "hello", "wOrLd", "Café",
         "brand_new_token", "<0x41>"]


def _version_sensitive(ours: Tokenizer, ref: Any, texts: list[str]) -> set[str]:
    """Characters whose Unicode normalization differs between this interpreter's
    ``unicodedata`` and the (older, ~Unicode 12) tables of the Rust crate tokenizers uses:
    characters assigned or given a combining class in later Unicode versions."""
    norm = ours._normalize
    if norm is None or ref.normalizer is None:
        return set()
    chars = {c for t in texts for c in t}
    bad = set()
    for c in chars:
        for probe in (c, "a" + c + "\u0316", "a\u0316" + c, "a" + c + "\u0301", c + "\u0301"):
            if ref.normalizer.normalize_str(probe) != norm(probe):
                bad.add(c)
                break
    return bad


@pytest.mark.parametrize("kind", KINDS)
def test_trained_tokenizers(kind: str) -> None:
    js = _trained_json(kind)
    ref = HFTokenizer.from_str(js)
    ours = Tokenizer.from_dict(json.loads(js))
    assert ours.vocab_size == ref.get_vocab_size(with_added_tokens=True)
    texts = corpus(EXTRA, n_random=500, seed=sum(map(ord, kind)))
    texts += ["hello", " hello ", "xhello hellox hello_ hello!", "a [MASK] b", "a   [MASK]",
              "<sep>   x", "  <both>  y", "Café CAFÉ café Cafe\u0301", "wOrLd world",
              "ΣΑΣ σας İI", "Ǆǅǆ ẞß ﬃ"]
    sensitive = _version_sensitive(ours, ref, texts)
    kept = [t for t in texts if not sensitive.intersection(t)]
    assert len(kept) > 0.85 * len(texts), sorted(sensitive)
    _check_same(ours, ref, kept)
    # random ids decode
    rng = random.Random(1)
    n = ref.get_vocab_size(with_added_tokens=True)
    for _ in range(200):
        ids = [rng.randrange(n) for _ in range(rng.randint(0, 10))]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip), (kind, ids)


# ----------------------------------------------------------------------------- stdlib only


def test_imports_only_standard_library() -> None:
    """realm_web.tokenizer (and its table module) import nothing outside the stdlib."""
    # Load the module without running realm_web/__init__.py (other modules' business).
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('realm_web')\n"
        f"pkg.__path__ = [{str(ROOT / 'realm_web')!r}]\n"
        "sys.modules['realm_web'] = pkg\n"
        "before = set(sys.modules)\n"
        "import realm_web.tokenizer as t\n"
        "t.Tokenizer  # noqa\n"
        "new = set(sys.modules) - before\n"
        "bad = sorted(m for m in new if m.split('.')[0] not in sys.stdlib_module_names"
        " and not m.startswith('realm_web'))\n"
        "assert not bad, bad\n"
        "for m in ('numpy', 'tokenizers', 'regex', 'transformers', 'unicodedata2'):\n"
        "    assert m not in sys.modules, m\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    # and statically: every import statement names a stdlib module or a sibling module
    import ast

    for name in ("tokenizer.py", "_unicode_tables.py"):
        tree = ast.parse((ROOT / "realm_web" / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert node.module in (None, "_unicode_tables"), node.module
                    continue
                mods = [node.module or ""]
            else:
                continue
            for m in mods:
                assert m.split(".")[0] in sys.stdlib_module_names, (name, m)
