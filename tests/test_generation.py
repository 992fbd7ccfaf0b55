"""Speculative-KD sampling: rejected proposals are replaced from the teacher's top-k; the lockstep KV-cache decoding
matches full forward passes."""

import torch

from kdlab.generation import speculative_generate_ids, speculative_token


def test_no_token_outside_the_teachers_top_k_is_kept():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4000, 30, generator=g) * 3, torch.randn(4000, 30, generator=g) * 3
    tokens, replaced = speculative_token(student, teacher, top_k=5, temperature=1.0, generator=g)
    top = teacher.topk(5, -1).indices
    assert (top == tokens[:, None]).any(-1).all()  # every token lies in the teacher's top-5
    assert 0.5 < replaced.float().mean() < 0.95  # and many proposals were rejected (5 of 30 tokens)
    # accepted rows keep the student's own proposal: re-drawing with the same generator state reproduces it
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    tokens, replaced = speculative_token(student, teacher, 5, 1.0, g1)
    proposal = torch.multinomial(torch.softmax(student, -1), 1, generator=g2)[:, 0]
    assert torch.equal(tokens[~replaced], proposal[~replaced])
    assert not (top[replaced] == proposal[replaced][:, None]).any(-1).any()


def test_top_k_equal_to_the_vocabulary_is_plain_student_sampling():
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(500, 12, generator=g), torch.randn(500, 12, generator=g)
    tokens, replaced = speculative_token(
        student, teacher, top_k=12, temperature=0.7, generator=torch.Generator().manual_seed(4)
    )
    proposal = torch.multinomial(torch.softmax(student / 0.7, -1), 1, generator=torch.Generator().manual_seed(4))[:, 0]
    assert not replaced.any() and torch.equal(tokens, proposal)


def test_speculative_generation_with_kv_caches_matches_full_forward_passes(tiny_models):
    """Every generated token is in the teacher's top-k at its position, checked by a plain teacher forward pass over
    the whole sequence (no cache, right-aligned prompts of different lengths)."""
    from kdlab.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_models["student"]))
    student = load_model(str(tiny_models["talker"])).eval()  # varied samples
    teacher = load_model(str(tiny_models["teacher"])).eval()
    vocab = len(tokenizer)
    prompts = [
        tokenizer("What is 12 + 7?")["input_ids"],
        tokenizer("Tom has 5 apples. How many are left?")["input_ids"],
    ]
    responses, proposed, replaced = speculative_generate_ids(
        student, teacher, tokenizer, prompts, 12, top_k=3, vocab_size=vocab, seed=0
    )
    assert proposed == sum(len(r) for r in responses) and 0 < replaced <= proposed
    for prompt, response in zip(prompts, responses):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = teacher(input_ids=ids).logits[0, :, :vocab]
        for offset, token in enumerate(response):
            top = logits[len(prompt) - 1 + offset].topk(3).indices.tolist()
            assert token in top, (offset, token, top)
    again = speculative_generate_ids(student, teacher, tokenizer, prompts, 12, top_k=3, vocab_size=vocab, seed=0)
    assert again[0] == responses  # seeded
