"""Cross-tokenizer alignment: byte offsets, spans of identical text, the shared vocabulary and the collated spans,
against hand-written expected spans."""

import pytest
import torch
from kdlab_testing import distill_config

from kdlab.data.formats import Example
from kdlab.data.token_alignment import align_spans, byte_offsets, sampled_teacher_tokens, shared_vocabulary, token_bytes
from kdlab.data.tokenize import collate, encode_examples
from kdlab.errors import KdlabError
from kdlab.train.inputs import with_teacher_tokens

EOS = None  # a special token: no bytes


def spans(student_pieces, teacher_pieces, text):
    """Align two hand-written tokenizations (lists of byte strings, None for EOS) of ``text``; the spans as
    ``[(student positions), (teacher positions)]``."""
    pieces = [*student_pieces, *teacher_pieces]
    s_ids, t_ids = list(range(len(student_pieces))), list(range(len(student_pieces), len(pieces)))
    alignment = align_spans(byte_offsets(pieces, s_ids, text, "s"), byte_offsets(pieces, t_ids, text, "t"))
    return [(tuple(s), tuple(t)) for s, t in alignment.spans()]


def test_a_multi_byte_character_split_differently():
    # "é" is two bytes: the student has them as two byte tokens, the teacher inside "fé"
    assert spans([b"caf", b"\xc3", b"\xa9", b" 5", EOS], [b"ca", b"f\xc3\xa9", b" ", b"5", EOS], "café 5") == [
        ((0, 1, 2), (0, 1)),
        ((3,), (2, 3)),
        ((4,), (4,)),
    ]


def test_a_number_split_into_digits_by_one_tokenizer_only():
    assert spans([b"has", b" 12", b".", EOS], [b"has", b" ", b"1", b"2", b".", EOS], "has 12.") == [
        ((0,), (0,)),
        ((1,), (1, 2, 3)),
        ((2,), (4,)),
        ((3,), (5,)),
    ]


def test_whitespace_merged_with_the_word_before_or_after():
    assert spans([b"a", b" ", b" b", EOS], [b"a ", b" ", b"b", EOS], "a  b") == [
        ((0, 1), (0,)),
        ((2,), (1, 2)),
        ((3,), (3,)),
    ]


def test_tokens_after_the_last_common_boundary_are_left_out():
    # the student's response was cut by max_length (no EOS, half a word): only the common prefix is aligned
    assert spans([b"has", b" 1"], [b"has", b" ", b"12", EOS], "has 12") == [((0,), (0,))]


def test_a_sentencepiece_leading_space_is_taken_off_the_first_token():
    pieces = [b" Tom", b" has"]
    assert byte_offsets(pieces, [0, 1], "Tom has", "sp") == [(0, 3), (3, 7)]


def test_tokens_that_do_not_spell_the_text_are_refused():
    with pytest.raises(KdlabError, match=r"data.json: example 3 \(teacher 'T'\): the tokens do not spell"):
        byte_offsets([b"Tom", b" had"], [0, 1], "Tom has", "data.json: example 3 (teacher 'T')")


@pytest.fixture(scope="module")
def smollm2_and_retrained():
    """SmolLM2's tokenizer (no BOS, every digit its own token, EOS <|im_end|>) and a byte-level BPE trained on the
    test text (BOS <s>, EOS </s>, " 12" one token)."""
    from kdlab.models.load import load_tokenizer
    from kdlab.models.retokenize import train_tokenizer

    retrained = train_tokenizer(["Tom has 12 apples."] * 4 + ["Below is an instruction"], vocab_size=400)
    return load_tokenizer("smollm2-135m"), retrained


def test_real_tokenizers_bos_in_one_only_and_digits(smollm2_and_retrained):
    """Student: the retrained tokenizer (adds BOS); teacher: SmolLM2 (no BOS, digits split). Hand-written spans of
    "Tom has 12 apples." and its EOS, and their rows in the collated batch."""
    teacher_tok, student_tok = smollm2_and_retrained
    example = Example(instruction="Count.", output="Tom has 12 apples.")
    config = distill_config(128)
    [item] = with_teacher_tokens(
        encode_examples(student_tok, [example], 128), [example], student_tok, teacher_tok, config
    )
    assert item.prompt_ids[0] == student_tok.bos_token_id and teacher_tok.bos_token_id not in item.teacher.prompt_ids
    assert student_tok.convert_ids_to_tokens(item.response_ids) == ["Tom", "Ġhas", "Ġ12", "Ġapples", ".", "</s>"]
    teacher_tokens = teacher_tok.convert_ids_to_tokens(item.teacher.response_ids)
    assert teacher_tokens == ["Tom", "Ġhas", "Ġ", "1", "2", "Ġapples", ".", "<|im_end|>"]
    assert [(tuple(s), tuple(t)) for s, t in item.teacher.alignment.spans()] == [
        ((0,), (0,)),
        ((1,), (1,)),
        ((2,), (2, 3, 4)),
        ((3,), (5,)),
        ((4,), (6,)),
        ((5,), (7,)),
    ]
    batch = collate([item, item], student_tok.pad_token_id)
    # rows among the predicted response positions, batch rows then positions (6 student, 8 teacher per example)
    assert batch["span_student_last"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert batch["span_teacher_last"].tolist() == [0, 1, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15]
    assert batch["span_teacher_of"].tolist()[:8] == [0, 1, 2, 2, 2, 3, 4, 5]
    assert batch["span_tokens"].tolist() == [1] * 12
    # the teacher's labels mark its response after its own (BOS-free) prompt
    labels = batch["teacher_labels"][0]
    assert labels[labels != -100].tolist() == item.teacher.response_ids


def test_real_tokenizers_spans_spell_the_same_text(smollm2_and_retrained):
    """Every span covers the same bytes on both sides, for text with multi-byte characters and unseen words."""
    teacher_tok, student_tok = smollm2_and_retrained
    text = "Zoë paid 1,250 € for 12 crêpes — naïve? The answer is 1250."
    s_ids = student_tok(text, add_special_tokens=False)["input_ids"] + [student_tok.eos_token_id]
    t_ids = teacher_tok(text, add_special_tokens=False)["input_ids"] + [teacher_tok.eos_token_id]
    s_pieces, t_pieces = token_bytes(student_tok), token_bytes(teacher_tok)
    alignment = align_spans(byte_offsets(s_pieces, s_ids, text, "s"), byte_offsets(t_pieces, t_ids, text, "t"))
    spans_ = alignment.spans()
    assert len(spans_) < len(s_ids) and len(spans_) < len(t_ids)  # some spans merge tokens on each side
    assert spans_[-1] == (range(len(s_ids) - 1, len(s_ids)), range(len(t_ids) - 1, len(t_ids)))  # EOS with EOS
    assert alignment.student_ends[-1] == len(s_ids) and alignment.teacher_ends[-1] == len(t_ids)
    for s, t in spans_:
        assert b"".join(s_pieces[s_ids[k]] or b"" for k in s) == b"".join(t_pieces[t_ids[k]] or b"" for k in t)


def test_shared_vocabulary_pairs_bytes_and_eos_by_role(smollm2_and_retrained):
    teacher_tok, student_tok = smollm2_and_retrained
    student_ids, teacher_ids = shared_vocabulary(student_tok, teacher_tok)
    pairs = dict(zip(teacher_ids, student_ids, strict=True))
    assert pairs[teacher_tok.eos_token_id] == student_tok.eos_token_id  # <|im_end|> with </s>
    assert teacher_tok.convert_tokens_to_ids("<|endoftext|>") not in pairs  # not with the student's EOS
    has = teacher_tok.convert_tokens_to_ids("Ġhas")
    assert pairs[has] == student_tok.convert_tokens_to_ids("Ġhas")
    assert len(set(student_ids)) == len(student_ids) and teacher_ids == sorted(teacher_ids)
    s_pieces, t_pieces = token_bytes(student_tok), token_bytes(teacher_tok)
    for teacher_id, student_id in pairs.items():
        assert t_pieces[teacher_id] == s_pieces[student_id] or teacher_id == teacher_tok.eos_token_id


def test_token_bytes_of_a_sentencepiece_vocabulary():
    """``▁`` is a space and ``<0xNN>`` a byte in SentencePiece vocabularies (byte fallback)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "▁Tom": 2, "▁has": 3, "<0xC3>": 4, "<0xA9>": 5, "▁": 6, "1": 7}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    assert token_bytes(tokenizer) == [None, None, b" Tom", b" has", b"\xc3", b"\xa9", b" ", b"1"]
    assert byte_offsets(token_bytes(tokenizer), [2, 3, 6, 4, 5, 1], "Tom has é", "sp") == [
        (0, 3),
        (3, 7),
        (7, 8),
        (8, 9),
        (9, 10),
        (10, 10),
    ]


def test_the_collated_spans_index_the_response_rows(tiny_models):
    """Two examples of different lengths: span rows continue across batch rows like response_hidden's."""
    from kdlab.models.load import load_tokenizer

    student_tok, teacher_tok = load_tokenizer(str(tiny_models["other"])), load_tokenizer(str(tiny_models["student"]))
    examples = [Example(instruction="Add.", output="3 + 14 = 17."), Example(instruction="Sub.", output="9 - 5 = 4.")]
    config = distill_config(128)
    items = with_teacher_tokens(encode_examples(student_tok, examples, 128), examples, student_tok, teacher_tok, config)
    batch = collate(items, student_tok.pad_token_id)
    n_s = [len(i.response_ids) for i in items]
    n_t = [len(i.teacher.response_ids) for i in items]
    assert len(batch["span_student_of"]) == sum(n_s) and len(batch["span_teacher_of"]) == sum(n_t)
    first = len(items[0].teacher.alignment.student_ends)
    assert batch["span_student_last"][first - 1] == n_s[0] - 1 and batch["span_teacher_last"][first - 1] == n_t[0] - 1
    assert batch["span_student_last"][-1] == sum(n_s) - 1 and batch["span_teacher_last"][-1] == sum(n_t) - 1
    assert int(batch["span_tokens"].sum()) == sum(n_s)
    assert torch.equal(batch["span_student_of"][: n_s[0]].unique(), torch.arange(first))


class _Teacher:
    """A stand-in teacher tokenizer: one token per character (its code point), EOS id 300."""

    eos_token_id = 300

    def __call__(self, text, add_special_tokens=False, split_special_tokens=True):
        return {"input_ids": [ord(char) for char in text]}


def test_a_students_sample_read_by_the_teacher():
    """On-policy samples: the teacher encodes the sampled text; its EOS only after the student's EOS; a character cut
    by the end of the sample (or bytes no text has) ends what the teacher reads."""
    pieces = [b"12", b" +", b" \xc3", b"\xa9", None]  # ids 0-3; 4 = the student's EOS
    teacher_pieces = [None] * 301
    for code in range(32, 0xFF):
        teacher_pieces[code] = chr(code).encode("utf-8")
    whole = sampled_teacher_tokens([0, 1, 2, 3, 4], pieces, 4, _Teacher(), teacher_pieces, [7, 8])
    assert whole.prompt_ids == [7, 8] and whole.response_ids == [ord(c) for c in "12 + é"] + [300]
    assert [(tuple(s), tuple(t)) for s, t in whole.alignment.spans()] == [
        ((0,), (0, 1)),
        ((1,), (2, 3)),
        ((2, 3), (4, 5)),
        ((4,), (6,)),
    ]
    cut = sampled_teacher_tokens([0, 1, 2], pieces, 4, _Teacher(), teacher_pieces, [7])
    assert cut.response_ids == [ord(c) for c in "12 +"] + [ord(" ")]  # no EOS; the cut "é" not read
    assert [(tuple(s), tuple(t)) for s, t in cut.alignment.spans()] == [((0,), (0, 1)), ((1,), (2, 3))]
    nothing = sampled_teacher_tokens([2], pieces, 4, _Teacher(), teacher_pieces, [7])  # no complete character
    assert nothing.response_ids == [ord(" ")] and nothing.alignment.spans() == []


def test_sentencepiece_regular_pieces_pair_before_byte_fallback():
    """``A`` and its byte-fallback ``<0x41>`` stand for the same byte: with one SentencePiece vocabulary on both sides
    ``A`` pairs with ``A`` (not with ``<0x41>``, which is almost never produced)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "<0x41>": 2, "▁": 3, "A": 4, "▁A": 5}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    student_ids, teacher_ids = shared_vocabulary(tokenizer, tokenizer)
    pairs = dict(zip(teacher_ids, student_ids, strict=True))
    assert pairs[4] == 4 and pairs[1] == 1 and pairs[5] == 5 and 2 not in pairs


def test_a_sentencepiece_space_in_front_of_text_that_starts_with_a_space():
    """A SentencePiece teacher reading an on-policy sample " The" spells "  The" (its own prefix space)."""
    assert byte_offsets([b" ", b" The"], [0, 1], " The", "sp") == [(0, 0), (0, 4)]


def test_a_sentencepiece_students_sample_loses_its_leading_space():
    pieces = [b" The", b" cat", None]
    tokens = sampled_teacher_tokens([0, 1, 2], pieces, 2, _Teacher(), [None] * 301, [5], strip_space=True)
    assert tokens.response_ids[:-1] == [ord(c) for c in "The cat"] and tokens.response_ids[-1] == 300
    assert tokens.alignment.spans() == []  # the stand-in teacher has no pieces: nothing spelled, no span


def test_a_tokenizer_that_is_neither_byte_level_nor_sentencepiece_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "tom": 1, "has": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(KdlabError, match="neither byte-level BPE nor SentencePiece"):
        token_bytes(tokenizer)
