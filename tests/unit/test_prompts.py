import pytest

from embedforge.prompts import format_document, format_query, pad_batch, tokenize_with_eos


def test_query_format_is_the_papers():
    assert format_query("how do cats purr", "Given a question, retrieve passages that answer it") == (
        "Instruct: Given a question, retrieve passages that answer it\nQuery: how do cats purr"
    )


def test_no_instruction_leaves_text_and_documents_untouched():
    assert format_query("q") == "q"
    assert format_query("q", "   ") == "q"
    assert format_document("doc text") == "doc text"


def test_every_sequence_ends_in_eos(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    ids = tokenize_with_eos(tiny_tokenizer, ["hello", "", "a" * 100], max_length=16)
    assert all(seq[-1] == eos for seq in ids)
    assert ids[1] == [tiny_tokenizer.bos_token_id, eos]  # empty text: BOS + EOS
    assert len(ids[2]) == 16  # truncated to max_length - 1, then EOS
    assert ids[2].count(eos) == 1


def test_eos_not_doubled_when_tokenizer_appends_it(tiny_tokenizer):
    from tokenizers import processors

    tiny_tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    ids = tokenize_with_eos(tiny_tokenizer, ["abc"], max_length=16)[0]
    assert ids[-1] == 2 and ids.count(2) == 1


def test_max_length_without_room_for_a_token_and_eos_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        tokenize_with_eos(tiny_tokenizer, ["x"], 1)


def test_pad_batch_pads_right_or_left_with_a_matching_mask():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], 0, side="middle")
