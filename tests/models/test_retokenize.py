"""A model under a new tokenizer (kdlab.models.retokenize): tokenizer, transplanted embeddings, saved folder."""

import torch

from kdlab.models.load import load_model, load_tokenizer
from kdlab.models.retokenize import retokenize_model, train_tokenizer

TEXTS = ["Tom has 12 apples and buys 30 more. The answer is 42."] * 3 + ["Zoë paid 5 €."]


def test_train_tokenizer_adds_bos_and_merges_numbers():
    tokenizer = train_tokenizer(TEXTS, vocab_size=320)
    ids = tokenizer("Tom has 12 apples")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token == "</s>" and tokenizer.pad_token == "</s>"
    assert "Ġ12" in tokenizer.convert_ids_to_tokens(ids)


def test_retokenized_model_has_mean_embeddings_and_runs(tiny_models, tmp_path):
    old_tokenizer, old = load_tokenizer(str(tiny_models["student"])), load_model(str(tiny_models["student"]))
    out = tmp_path / "retok"
    tokenizer = retokenize_model(str(tiny_models["student"]), TEXTS, 320, out)
    model = load_model(str(out))
    new = model.get_input_embeddings().weight
    assert new.shape[0] == len(tokenizer) == len(load_tokenizer(str(out)))
    assert torch.isfinite(new).all()  # bytes the old vocabulary lacks (0xC0, 0xFF) get the mean of all rows
    assert model.get_output_embeddings().weight.data_ptr() == new.data_ptr()  # still tied
    token = tokenizer.convert_tokens_to_ids("Ġ12")
    pieces = [t.id for t in old_tokenizer.backend_tokenizer.model.tokenize("Ġ12")]
    expected = old.get_input_embeddings().weight[pieces].mean(0)
    torch.testing.assert_close(new[token], expected)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    logits = model(**tokenizer("Tom has 12 apples", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
    assert (out / "RETOKENIZED.txt").is_file()
